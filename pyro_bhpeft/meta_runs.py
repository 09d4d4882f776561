"""ABMLL's tasks, runs and command line: registered multiple-choice tasks as meta-training batches, a meta-fit
run saved as a posterior, and the evaluation of a meta-fitted prior on an unseen task (:mod:`pyro_bhpeft.meta`
holds the model, the amortised task guide and the fit)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch

from .config import ConfigError
from .meta import HierarchicalPrior, MetaConfig, adapt, meta_fit, to_posterior

__all__ = ["task_batches", "support_and_query", "meta_fit_run", "meta_evaluate_run"]


def _load_for(task: str, backbone: Any, tokenizer: Any, answers: int | None):
    """Registered ``task`` as ``backbone`` scores it (multiple choice on a decoder: one prompt, answer letters),
    checked against a head of ``answers`` letters (None: an encoder's choice scorer, any number)."""
    from .data import load_task
    from .data.prompts import for_backbone

    data = load_task(task) if backbone is None else for_backbone(load_task(task), backbone, tokenizer)
    if data.spec.kind == "answer_choice" and answers is not None and data.spec.num_choices > answers:
        raise ConfigError(f"{task} has {data.spec.num_choices} choices; this meta-fitted head answers at most "
                          f"{answers} (meta-fit with a task of as many choices)")
    return data


class _Masked:
    """Batches of an ``answer_choice`` task with fewer choices than the shared head of ``answers`` letters,
    with the ``choice_mask`` hiding the letters it does not have."""

    def __init__(self, batches: Iterable, choices: int, answers: int) -> None:
        self.batches, self.choices, self.answers = batches, choices, answers

    def __iter__(self):
        for inputs, labels in self.batches:
            mask = (torch.arange(self.answers) < self.choices).expand(len(labels), -1)
            yield {**inputs, "choice_mask": mask}, labels

    def __len__(self) -> int:
        return len(self.batches)


def _with_mask(batches: Iterable, spec: Any, answers: int | None) -> Iterable:
    if spec.kind != "answer_choice" or answers is None or spec.num_choices == answers:
        return batches
    return _Masked(batches, spec.num_choices, answers)


def task_batches(tasks: Sequence[str], tokenizer: Any, *, per_task: int, batch_size: int, max_length: int = 64,
                 seed: int = 0, backbone: Any = None, answers: int | None = None) -> dict[str, list]:
    """Per registered task, the batches of a random ``per_task`` of its training examples (seeded), as
    ``backbone`` scores them (a decoder: answer letters, ``answers`` of them in the shared head)."""
    import datasets

    from .data import TaskData, make_loader, tokenize

    out = {}
    for i, task in enumerate(tasks):
        data = _load_for(task, backbone, tokenizer, answers)
        train = data.splits["train"].shuffle(seed=seed).select(range(min(per_task, len(data.splits["train"]))))
        split = tokenize(TaskData(data.spec, datasets.DatasetDict(train=train)), tokenizer, max_length)["train"]
        out[task] = list(_with_mask(make_loader(split, batch_size, shuffle=True, seed=seed + i), data.spec, answers))
    return out


def support_and_query(task: str, tokenizer: Any, *, support: int, query: int | None, max_length: int = 64,
                      seed: int = 0, batch_size: int = 16, backbone: Any = None,
                      answers: int | None = None) -> tuple[list, Any]:
    """An unseen task's support set (``support`` random training examples, one batch) and query loader (its
    first ``query`` test examples; None: all), as ``backbone`` scores them (see :func:`task_batches`)."""
    import datasets

    from .data import TaskData, make_loader, tokenize

    data = _load_for(task, backbone, tokenizer, answers)
    train, test = data.splits["train"], data.splits["test"]
    if support > len(train):
        raise ConfigError(f"{task} has {len(train)} training examples; ask for at most that many support examples")
    picked = train.shuffle(seed=seed).select(range(support))
    test = test.select(range(min(query, len(test)))) if query else test
    tok = tokenize(TaskData(data.spec, datasets.DatasetDict(train=picked, test=test)), tokenizer, max_length)
    return (list(_with_mask(make_loader(tok["train"], support), data.spec, answers)),
            _with_mask(make_loader(tok["test"], batch_size), data.spec, answers))


def _meta_model(bb: Any, tasks: Sequence[str]):
    """The model ABMLL meta-fits on ``bb``: full-matrix deltas on its LoRA targets and, on an encoder, the
    multiple-choice scorer; on a decoder, answer-letter scoring with one head of as many letters as the
    task with most choices has (the others mask the letters they lack). Returns (model, answers or None)."""
    from .config import PeftConfig
    from .data import TASKS
    from .data.prompts import answer_token_ids, prompt_style
    from .models import AnswerChoice, MultipleChoice
    from .layers.arch import architecture
    from .layers.delta import DeltaConfig

    peft = PeftConfig(lora=None, delta=DeltaConfig())
    if not architecture(bb.model).decoder:
        return MultipleChoice(bb.model, peft), None
    answers = max(TASKS[t].num_choices for t in tasks)
    ids = answer_token_ids(bb.tokenizer, prompt_style("default").answer_strings(answers))
    return AnswerChoice(bb.model, peft, answer_ids=ids), answers


def meta_fit_run(tasks: Sequence[str], out: Any, *, backbone: str = "minilm", config: MetaConfig = MetaConfig(),
                 per_task: int = 1000, max_length: int = 64, progress: bool = True, overwrite: bool = False):
    """Meta-fit ABMLL on registered multiple-choice ``tasks`` (full-matrix deltas on the backbone's LoRA targets)
    and save it at ``out`` as a run (atomically; an existing one only with ``overwrite``): its guide the prior
    predictive of a new task, ``p(phi | theta)``."""
    from pathlib import Path

    from .backbone import load_backbone
    from .data import TASKS

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown tasks {unknown}; see `pyro-bhpeft tasks`")
    kinds = {TASKS[t].kind for t in tasks}
    if kinds != {"multiple_choice"}:
        raise ConfigError(f"ABMLL meta-fits multiple-choice tasks; {[t for t in tasks if TASKS[t].kind != 'multiple_choice']} "
                          "are not")
    bb = load_backbone(backbone)
    model, answers = _meta_model(bb, tasks)
    batches = task_batches(tasks, bb.tokenizer, per_task=per_task, batch_size=config.support + config.query,
                           max_length=max_length, seed=config.seed, backbone=bb.model, answers=answers)
    result = meta_fit(model, batches, config, progress=progress)  # each task's size: its examples, at most per_task
    posterior = to_posterior(adapt(model, result.prior, [], steps=0), abmll={
        "config": config.__dict__, "tasks": list(tasks), "per_task": per_task, "max_length": max_length,
        "history": result.history, "kl_history": result.kl_history, "seconds": result.seconds})
    posterior.backbone_name = backbone
    posterior.save(Path(out), overwrite=overwrite)
    return posterior, result


def meta_evaluate_run(run: Any, task: str, *, support: int = 32, steps: int = 10, samples: int = 4,
                      query: int | None = 200, seed: int = 0, out: Any = None) -> dict[str, Any]:
    """Adapt a meta-fitted run to an unseen ``task`` on ``support`` of its training examples for ``steps`` steps
    and score its first ``query`` test examples; ``out``: save the adapted posterior there too."""
    from pathlib import Path

    from .analysis import metrics
    from .backbone import load_tokenizer
    from .posterior import Posterior
    from .predict import predict

    base = Posterior.load(Path(run))
    prior = base.model.prior
    if not isinstance(prior, HierarchicalPrior):
        raise ConfigError(f"{run} is not a meta-fitted run (its prior is {prior.type_name!r}); make one with meta-fit")
    facts = base.meta.get("abmll", {})
    tokenizer = load_tokenizer(base.backbone_name or "minilm")
    answers = len(base.model.answer_ids) if hasattr(base.model, "answer_ids") else None
    support_set, query_loader = support_and_query(task, tokenizer, support=support, query=query,
                                                  max_length=facts.get("max_length", 64), seed=seed,
                                                  backbone=base.model.backbone, answers=answers)
    inner_lr = facts.get("config", {}).get("inner_lr", MetaConfig.inner_lr)
    adapted = to_posterior(adapt(base.model, prior, support_set, steps=steps, lr=inner_lr, num_data=support),
                           abmll_task=task, support=support, steps=steps, seed=seed)
    adapted.backbone_name = base.backbone_name
    pred = predict(adapted, query_loader, num_samples=samples, seed=seed)
    result = {"task": task, "support": support, "steps": steps, "samples": samples, "seed": seed,
              **metrics.classification_metrics(pred.probs.numpy(), pred.labels.numpy())}
    if out is not None:
        adapted.save(Path(out))
    return result
