"""``run_compare``: check the protocol, run every missing (method, seed) cell, write the summary."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from ..io import write_json
from .bench import Bench
from .cells import done_seeds, is_done, run_cell
from .methods import DEFAULT_METHODS, METHODS
from .record import refusal
from .protocol import Protocol
from .report import summarize

__all__ = ["run_compare"]


def run_compare(protocol: Protocol, out: str | Path, *, methods: Sequence[str] = DEFAULT_METHODS,
                seeds: Sequence[int] = (0, 1, 2), data: Any = None, ood: Any = None, overwrite: bool = False,
                progress: bool = True, workers: int = 1, ray_address: str | None = None, cpus_per_worker: int = 1,
                gpus_per_worker: float = 0) -> Path:
    """Fit and score every (method, seed) cell not already in ``out``, then write the summary of every method
    that has cells in ``out`` (in registry order).

    ``methods`` are names in :data:`METHODS`. ``data``/``ood`` default to the protocol's registered
    tasks; pass :class:`TaskData` to compare on your own. Returns the path of ``comparison.md``, which covers
    every method and seed with cells in ``out``, not only those of this call.
    ``workers`` > 1 or ``ray_address`` run the cells as Ray tasks (:mod:`pyro_bhpeft.compare.sweep`), each
    with ``cpus_per_worker`` threads and ``gpus_per_worker`` GPUs reserved; the cells and the table are the same.
    The cells' models run on the CPU either way (the comparison has no GPU path yet: its peers' training loops
    keep their tensors on the CPU), so a reserved GPU stays idle; a warning says so.

    Example::

        >>> run_compare(Protocol(task="sentiment", train_size=200), "runs/cmp", methods=("lora", "mean-field"))
        PosixPath('runs/cmp/comparison.md')
    """
    from ..data import load_task

    methods = METHODS.check(methods)
    for name in methods:  # before hours of other cells, not at the first cell that needs a missing library
        METHODS[name].check_installed(name)
    refused = {m: why for m in methods if (why := refusal(protocol, m))}
    if refused:  # e.g. the peft library's LoRA or a closed form over the head, on cloze-scored choices
        raise ConfigError("; ".join(f"{m} {why}" for m, why in refused.items()) + "; leave "
                          f"{'it' if len(refused) == 1 else 'them'} out of --methods")
    if not seeds:
        raise ConfigError("give at least one seed")
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if any(METHODS[name].backbone_dropout for name in methods):  # e.g. mc-dropout on SmolLM2, refused up front
        from ..backbone import check_dropout, load_backbone

        check_dropout(load_backbone(protocol.backbone).model)
    out = Path(out)
    data = data if data is not None else load_task(protocol.task)
    from ..models import TASK_KINDS

    if data.spec.kind == "regression":
        not_real = [m for m in methods if not METHODS[m].regression]
        if not_real:
            raise ConfigError(f"{', '.join(not_real)} score classes only; {data.spec.name} is a regression: leave "
                              "them out of --methods")
    elif not TASK_KINDS[data.spec.kind].predicts_classes:
        raise ConfigError(f"compare scores classifiers and regressions; {data.spec.name} is {data.spec.kind}")
    if ood is None and protocol.ood_task:
        ood = load_task(protocol.ood_task)
    _check_protocol(out, protocol, overwrite)
    if gpus_per_worker:
        import sys

        print("compare: warning: the cells run on the CPU; --gpus-per-worker only reserves GPUs (the comparison has "
              "no GPU path yet)", file=sys.stderr)
    if workers > 1 or ray_address:
        from .sweep import run_on_ray

        run_on_ray(protocol, out, data, ood, methods, seeds, workers=workers, address=ray_address,
                   cpus=cpus_per_worker, gpus=gpus_per_worker)
    else:
        bench = Bench(protocol, out, data, ood, progress)
        for method in methods:
            for seed in seeds:
                run_cell(bench, method, seed)
    # the summary covers every method and seed with cells here, so adding methods or filling one missing seed
    # keeps the other rows and the other seeds (running --seeds 2 alone must not leave a seed-2-only table)
    seeds = sorted(set(seeds) | set(done_seeds(out)))
    finished = [m for m in METHODS if any(is_done(out, m, s) for s in seeds)]
    return summarize(out, finished, seeds)


def _check_protocol(out: Path, protocol: Protocol, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, discard) a directory holding another protocol; record this one."""
    saved = out / "protocol.json"
    if saved.exists():
        if json.loads(saved.read_text()) != protocol.to_dict():
            if not overwrite:
                raise FileExistsError(f"{out} holds a comparison with a different protocol; choose another --out "
                                      "or pass --overwrite to discard it")
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        write_json(saved, protocol.to_dict())
