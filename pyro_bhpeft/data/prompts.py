"""Multiple choice for causal language models, scored the way the Bayesian-PEFT papers score it.

BLoB, Laplace-LoRA and IVON-LoRA all agree: one prompt per question, the choices listed under letters,
ending in ``Answer:``; left padding, so the last position is the prompt's last token; the next-token
logits there, restricted to the answers' tokens (``" A"``, ``" B"``, ... or BoolQ's ``" true"`` /
``" false"``), softmaxed, give the likelihood. :func:`for_backbone` turns a ``multiple_choice`` task into
this ``answer_choice`` kind when the backbone is a decoder; :class:`models.AnswerChoice` scores it.

Example::

    data = for_backbone(load_task("arc-easy"), backbone.model, backbone.tokenizer)
    data.spec.kind, data.spec.label_names    # "answer_choice", (" A", " B", " C", " D")
    PROMPT_STYLES["default"].prompt("Which is a metal?", ["iron", "wood"])
    # 'Question: Which is a metal?\\nA) iron\\nB) wood\\nAnswer:'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..registry import Registry
from .types import DataError, TaskData, TaskSpec

__all__ = ["PromptStyle", "PROMPT_STYLES", "prompt_style", "answer_token_ids", "encode_prompts", "for_backbone",
           "check_answer_spec", "LETTERS"]

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class PromptStyle:
    """How one task's rows become prompts. ``header`` formats the question; ``list_choices`` lists the
    choices as ``A) text`` lines; ``answers`` are the answer strings, one per choice (None: ``" A"``,
    ``" B"``, ...); ``expect_choices``, where given, must be every row's choices (so answers cannot be
    mapped to the wrong choice)."""

    header: str = "Question: {question}"
    list_choices: bool = True
    answers: tuple[str, ...] | None = None
    expect_choices: tuple[str, ...] | None = None

    def prompt(self, question: str, choices: Sequence[str]) -> str:
        if self.expect_choices is not None and tuple(choices) != self.expect_choices:
            raise DataError(f"a row's choices are {list(choices)}, this prompt style maps answers to "
                            f"{list(self.expect_choices)}; fix the data or register another PROMPT_STYLES entry")
        lines = [self.header.format(question=question.strip())]
        if self.list_choices:
            lines += [f"{LETTERS[i]}) {choice.strip()}" for i, choice in enumerate(choices)]
        return "\n".join([*lines, "Answer:"])

    def answer_strings(self, num_choices: int) -> tuple[str, ...]:
        if self.answers is not None:
            if len(self.answers) != num_choices:
                raise DataError(f"the prompt style has {len(self.answers)} answers for {num_choices} choices")
            return self.answers
        if num_choices > len(LETTERS):
            raise DataError(f"{num_choices} choices; answer letters go up to {len(LETTERS)}")
        return tuple(f" {LETTERS[i]}" for i in range(num_choices))


# Keyed by task name; a task without its own entry uses the part of its name before the first "-"
# ("winogrande-s" -> "winogrande"), else "default". User files use "default".
PROMPT_STYLES: Registry[PromptStyle] = Registry("prompt style")
PROMPT_STYLES.register("default", PromptStyle())
PROMPT_STYLES.register("winogrande", PromptStyle("Which ending completes the sentence? {question} ..."))
PROMPT_STYLES.register("piqa", PromptStyle("Goal: {question}"))
PROMPT_STYLES.register("boolq", PromptStyle("{question}", list_choices=False, answers=(" true", " false"),
                                            expect_choices=("yes", "no")))


def prompt_style(task: str) -> PromptStyle:
    for key in (task, task.split("-")[0]):
        if key in PROMPT_STYLES:
            return PROMPT_STYLES[key]
    return PROMPT_STYLES["default"]


def answer_token_ids(tokenizer: Any, answers: Sequence[str]) -> tuple[int, ...]:
    """The one token id of each answer string, or a one-line error naming the answer that is not one token."""
    ids = []
    for answer in answers:
        tokens = tokenizer.encode(answer, add_special_tokens=False)
        if len(tokens) != 1:
            raise DataError(f"the answer {answer!r} is {len(tokens)} tokens for this tokenizer ({tokens}); answer-token "
                            "scoring needs one token per answer: register a PROMPT_STYLES entry with other answers")
        ids.append(int(tokens[0]))
    if len(set(ids)) != len(ids):
        raise DataError(f"the answers {list(answers)} share a token ({ids}); they must be distinct")
    return tuple(ids)


def encode_prompts(spec: TaskSpec, tokenizer: Any, settings: dict) -> Callable[[dict], dict]:
    """The batched ``Dataset.map`` function for ``answer_choice`` rows: one prompt each, ids and mask
    ``(rows, max_length)``, left padded and, where too long, cut from the left (``Answer:`` always stays)."""
    style, length = prompt_style(spec.name), settings["max_length"]
    pad = tokenizer.pad_token_id

    def encode(batch: dict) -> dict:
        texts = [style.prompt(q, c) for q, c in zip(batch["question"], batch["choices"])]
        ids = [row[-length:] for row in tokenizer(texts)["input_ids"]]
        return {"input_ids": [[pad] * (length - len(row)) + row for row in ids],
                "attention_mask": [[0] * (length - len(row)) + [1] * len(row) for row in ids]}

    return encode


def for_backbone(data: TaskData, model: Any, tokenizer: Any, scoring: str = "letters") -> TaskData:
    """``data`` as ``model`` (a backbone) scores it: a multiple-choice task on a decoder becomes
    ``answer_choice`` (answers and their token ids in the spec; ``scoring="letters"``) or a cloze kind
    (``scoring="cloze"`` or ``"cloze-mean"``: each choice's likelihood, :mod:`pyro_bhpeft.data.cloze`); anything
    else comes back unchanged."""
    from ..layers.arch import architecture
    from .cloze import CLOZE_KINDS, cloze_spec

    spec = data.spec
    if scoring not in ("letters", *CLOZE_KINDS):
        raise DataError(f"unknown multiple-choice scoring {scoring!r}; choose letters, {', '.join(CLOZE_KINDS)}")
    if spec.kind != "multiple_choice" or not architecture(model).decoder:
        return data
    if scoring != "letters":
        return replace(data, spec=cloze_spec(spec, scoring))
    answers = prompt_style(spec.name).answer_strings(spec.num_choices)
    answer_spec = TaskSpec(spec.name, "answer_choice", label_names=answers, num_choices=spec.num_choices,
                           description=spec.description, hub_id=spec.hub_id,
                           answer_ids=answer_token_ids(tokenizer, answers))
    return replace(data, spec=answer_spec)  # the splits, their sources, notes and warnings kept


def check_answer_spec(spec: TaskSpec) -> None:
    """The ``answer_choice`` spec check: one answer string and one token id per choice."""
    if spec.num_choices < 2 or len(spec.label_names) != spec.num_choices or len(spec.answer_ids) != spec.num_choices:
        raise DataError(f"task {spec.name!r}: answer_choice needs num_choices >= 2 and one answer string and token "
                        "id per choice; build it with pyro_bhpeft.data.prompts.for_backbone")
