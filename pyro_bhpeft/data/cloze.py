"""Multiple choice scored by a causal LM's likelihood of each choice's own text ("cloze", as the LM evaluation
harnesses score it), rather than by answer letters.

A ``cloze_choice`` row is a question and its choices; each (question, choice) pair becomes one sequence, the
choice's text as the continuation of a context, right padded to ``max_length`` (a long context gives way
from its start; the ending always stays), with ``continuation_mask`` marking the ending's tokens.
:class:`~pyro_bhpeft.models.ClozeChoice` scores it by the summed (``cloze_choice``) or per-token mean
(``cloze_choice_mean``) log-probability of those tokens under one posterior draw shared by the question's
choices.

Example::

    data = for_backbone(load_task("arc-easy"), lm.model, lm.tokenizer, scoring="cloze")
    data.spec.kind          # "cloze_choice"
"""

from __future__ import annotations

from typing import Any, Callable

from .types import DataError, TaskSpec

__all__ = ["CLOZE_KINDS", "cloze_context", "encode_cloze", "cloze_spec"]

CLOZE_KINDS = {"cloze": "cloze_choice", "cloze-mean": "cloze_choice_mean"}  # scoring -> task kind


def cloze_context(task: str, question: str) -> str:
    """The text a choice continues: WinoGrande's rows are cut at the blank already, others get a question frame."""
    return question.strip() if task.startswith("winogrande") else f"Question: {question.strip()}\nAnswer:"


def encode_cloze(spec: TaskSpec, tokenizer: Any, settings: dict) -> Callable[[dict], dict]:
    """The batched ``Dataset.map`` function: ``input_ids``, ``attention_mask`` and ``continuation_mask``
    ``(rows, choices, max_length)``."""
    length, pad = settings["max_length"], tokenizer.pad_token_id

    def one(context: list[int], ending: list[int]) -> tuple[list[int], list[int], list[int]]:
        if len(ending) >= length:
            raise DataError(f"a choice is {len(ending)} tokens, at least max_length ({length}); raise max_length")
        context = context[-(length - len(ending)):]
        row = context + ending
        fill = length - len(row)
        return row + [pad] * fill, [1] * len(row) + [0] * fill, [0] * len(context) + [1] * len(ending) + [0] * fill

    def encode(batch: dict) -> dict:
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "continuation_mask": []}
        for question, choices in zip(batch["question"], batch["choices"]):
            context = tokenizer.encode(cloze_context(spec.name, question), add_special_tokens=False)
            rows = [one(context, tokenizer.encode(" " + c.strip(), add_special_tokens=False)) for c in choices]
            for key, part in zip(out, zip(*rows)):
                out[key].append(list(part))
        return out

    return encode


def cloze_spec(spec: TaskSpec, scoring: str) -> TaskSpec:
    """The multiple-choice ``spec`` as a cloze task of ``scoring`` (``cloze`` or ``cloze-mean``)."""
    return TaskSpec(spec.name, CLOZE_KINDS[scoring], num_choices=spec.num_choices, description=spec.description,
                    hub_id=spec.hub_id)
