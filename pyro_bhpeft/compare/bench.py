"""What every method works with: the protocol's data (subset and tokenised once), the shared fit cache
under ``out/fits``, peak-memory measurement, and :class:`Scored`, what a method returns."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError
from ..recipe import EVAL_BATCH_SIZE, Recipe
from .protocol import Protocol

__all__ = ["Bench", "Scored", "PeakMemory", "fit_dir", "post_hoc_dir", "CHECKPOINT_EVERY"]

CHECKPOINT_EVERY = 50  # steps between checkpoints of a comparison's fits (an interrupted cell resumes mid-fit)


def fit_dir(out: Path, recipe: Recipe) -> Path:
    """Where :meth:`Bench.fitted` keeps the fit of ``recipe``: ``fits/{guide}-seed{seed}-{key}``, the key
    being the first 12 hex digits of the SHA-256 of the recipe's sorted JSON (committed results rely on it), less
    ``predict_samples``: how a fit predicts is not part of it."""
    fitted = recipe.with_(predict_samples=None).to_dict()
    key = hashlib.sha256(json.dumps(fitted, sort_keys=True).encode()).hexdigest()[:12]
    return Path(out) / "fits" / f"{recipe.guide}-seed{recipe.seed}-{key}"


def post_hoc_dir(out: Path, name: str, seed: int) -> Path:
    """Where a post-hoc posterior ``name`` built on seed ``seed``'s fit is kept: ``fits/{name}-seed{seed}``."""
    return Path(out) / "fits" / f"{name}-seed{seed}"


class Bench:
    """The protocol's data, tokenised once, and the fits made so far (saved under ``out/fits``)."""

    def __init__(self, protocol: Protocol, out: Path, data: Any, ood: Any | None, progress: bool) -> None:
        from ..backbone import load_backbone
        from ..data import make_loader, tokenize
        from ..data.prompts import for_backbone

        self.protocol, self.out, self.progress = protocol, Path(out), progress
        self.ood_shift = False  # True: the OOD task answers in the same label space (scored on its labels)
        backbone = load_backbone(protocol.backbone)
        tokenizer = backbone.tokenizer
        scoring = protocol.mc_scoring  # multiple choice on a causal LM: answer tokens or each choice's likelihood
        data = for_backbone(data, backbone.model, tokenizer, scoring)
        self.data = subset(data, {"train": protocol.train_size}, protocol.eval_size, protocol.subset_seed)
        self.spec = data.spec
        self.tokenized = tokenize(self.data, tokenizer, protocol.max_length)
        self.eval_loaders = {s: make_loader(self.tokenized[s], EVAL_BATCH_SIZE)
                             for s in ("validation", "test")
                             if s in self.tokenized}
        if ood is not None:
            ood = subset(for_backbone(ood, backbone.model, tokenizer, scoring), {}, protocol.eval_size, protocol.subset_seed,
                         splits=("test",))
            if ood.spec.kind != data.spec.kind:
                raise ConfigError(f"the OOD task is {ood.spec.kind} but {protocol.task} is {data.spec.kind}; "
                                  "pick an OOD task of the same kind (--ood)")
            self.ood_shift = same_answers(ood.spec, data.spec)
            ood_tokens = tokenize(ood, tokenizer, protocol.max_length)["test"]
            self.eval_loaders["ood"] = make_loader(ood_tokens, EVAL_BATCH_SIZE)
        self.num_train = len(self.data.splits["train"])
        self.predict_seconds = 0.0  # prediction time of the current cell

    def train_loader(self, seed: int):
        from ..data import make_loader

        return make_loader(self.tokenized["train"], self.protocol.batch_size, shuffle=True, seed=seed)

    def backbone(self):
        from ..backbone import load_backbone

        return load_backbone(self.protocol.backbone).model  # fresh: PEFT injection changes it

    def predict_all(self, fn: Callable[[Any], Any], splits: Sequence[str] = ("test", "ood")) -> dict[str, Any]:
        """``fn(loader)`` on the test and OOD examples, its time added to the cell's prediction time, and on
        the validation examples when the task has them (untimed: the cost columns stay test plus OOD, as in
        cells saved before validation was scored). Validation metrics are what a selection among methods
        may read; test metrics are reported only."""
        tick = time.perf_counter()
        preds = {s: fn(self.eval_loaders[s]) for s in splits if s in self.eval_loaders}
        self.predict_seconds += time.perf_counter() - tick
        if "validation" in self.eval_loaders and "validation" not in preds:
            preds["validation"] = fn(self.eval_loaders["validation"])
        return preds

    def fitted(self, recipe: Recipe) -> tuple[Any, dict[str, Any]]:
        """The posterior of ``recipe`` on the training subset (fitted once, then loaded from
        :func:`fit_dir`) and its facts: ``seconds``, ``steps``, ``peak_mb``, ``trainable``."""
        from ..data import TASKS
        from ..posterior import Posterior
        from ..recipe import recipe_backbone
        from ..checkpoint import resumable
        from ..runs import DataSource, checkpoint_path, fit_identity, fit_run

        path = fit_dir(self.out, recipe)
        if (path / "fit.json").exists():  # the recipe's backbone, in its precision
            saved = json.loads((path / "fit.json").read_text())
            return Posterior.load(path, backbone=recipe_backbone(recipe).model), saved
        source = None
        if self.protocol.task in TASKS:  # a registered task: diagnose and evaluate can reload the data
            source = DataSource(task=self.protocol.task, seed=0, train_size=self.protocol.train_size,
                                subset_seed=self.protocol.subset_seed)
        facts: dict[str, Any] = {}

        def fit_facts(result) -> dict[str, Any]:
            facts.update(seconds=result.seconds, steps=result.steps, peak_mb=float(peak_mb()),
                         trainable=sum(p.numel() for p in result.posterior.guide.parameters() if p.requires_grad))
            return {"fit.json": facts}

        with PeakMemory() as peak:
            peak_mb = peak.now
            result = fit_run(recipe, self.data, path, source=source, backbone=recipe_backbone(recipe),
                             overwrite=True, progress=self.progress, extra=fit_facts, checkpoint_every=CHECKPOINT_EVERY,
                             # an interrupted comparison resumes mid-fit: only its own checkpoint (safetensors
                             # plus JSON, the recipe checked from the header first); any other file is replaced
                             resume=resumable(checkpoint_path(path), fit_identity(recipe, source)))
        return result.posterior, facts


def same_answers(a: Any, b: Any) -> bool:
    """Whether two task specs answer in one label space (the same kind, class names and number of choices),
    so a model fitted on one can be scored on the other's labels: BLoB's distribution-shift check (trained on
    OpenBookQA, tested on ARC) rather than only the OOD-detection AUROC."""
    return (a.kind, tuple(a.label_names), a.num_choices) == (b.kind, tuple(b.label_names), b.num_choices)


def subset(data: Any, sizes: dict[str, int], eval_size: int, seed: int, splits: Sequence[str] | None = None):
    """Random rows of each split (``sizes`` per split name, ``eval_size`` for the others)."""
    import datasets

    from ..runs import random_rows

    keep = {name: random_rows(split, sizes.get(name, eval_size), seed) for name, split in data.splits.items()
            if splits is None or name in splits}
    return type(data)(data.spec, datasets.DatasetDict(keep))


class PeakMemory:
    """Peak resident memory (MB) of this process inside the block. Linux resets the high-water mark
    through ``/proc/self/clear_refs``; elsewhere the process-wide peak so far is reported."""

    def __enter__(self) -> "PeakMemory":
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        self.mb = float("nan")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.mb = self.now()

    def now(self) -> float:
        """The peak so far inside the block."""
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Scored:
    """What one method produced for one seed: predictions per split (``test``, and ``ood`` when the bench
    has OOD examples), its training cost, and notes saved with the cell's metrics."""

    predictions: dict[str, Any]
    train_seconds: float
    peak_mb: float
    trainable: int
    notes: dict[str, Any] = field(default_factory=dict)
