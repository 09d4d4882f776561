"""Tokenisation and batching: task splits -> ``(inputs, labels)`` batches for the models.

Nothing here writes cache files: tokenisation runs in memory (the task cache stays read-only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch
from datasets.fingerprint import generate_random_fingerprint
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from .types import DATA_KINDS, DataError, TaskData, TaskSpec

__all__ = ["tokenize", "make_loader", "encode_text", "encode_pairs", "trim_left_padding", "trim_right_padding",
           "MODEL_INPUTS"]

MODEL_INPUTS = ("input_ids", "attention_mask")
EXTRA_INPUTS = ("continuation_mask", "target_mask")  # per-token roles: cloze choices, LM responses


def encode_text(spec: TaskSpec, tokenizer: Any, settings: dict) -> Callable[[dict], dict]:
    """The batched ``Dataset.map`` function for rows with ``text``: ids and mask (rows, L)."""
    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["text"], **settings)
        return {k: enc[k] for k in MODEL_INPUTS}

    return encode


def encode_pairs(spec: TaskSpec, tokenizer: Any, settings: dict) -> Callable[[dict], dict]:
    """The batched function for ``question``/``choices`` rows: each (question, choice) pair, (rows, n, L)."""
    def encode(batch: dict) -> dict:
        n = spec.num_choices
        bad = next((c for c in batch["choices"] if len(c) != n), None)
        if bad is not None:
            raise DataError(f"task {spec.name!r} has {n} choices per question, but a row has {len(bad)}: {bad!r}; "
                            "keep only rows with the task's number of choices")
        firsts = [q for q in batch["question"] for _ in range(n)]  # (rows * n) question, choice pairs
        seconds = [c for choices in batch["choices"] for c in choices]
        enc = tokenizer(firsts, seconds, **settings)  # truncation: longest first, so a long passage gives way
        return {k: [enc[k][i:i + n] for i in range(0, len(seconds), n)] for k in MODEL_INPUTS}  # (rows, n, L)

    return encode


def _encoder(data: TaskData, tokenizer: Any, max_length: int) -> Callable[[dict], dict]:
    """The batched function for ``Dataset.map``, from the task's kind: fixed-length ids and mask for each row."""
    settings = {"truncation": True, "max_length": max_length, "padding": "max_length", "return_token_type_ids": False}
    return DATA_KINDS[data.spec.kind].encoder(data.spec, tokenizer, settings)


def tokenize(data: TaskData, tokenizer: Any, max_length: int = 64) -> datasets.DatasetDict:
    """Add ``input_ids`` and ``attention_mask`` (padded to ``max_length``, truncated) to every split.

    Multiple choice pairs the question with each choice: (num_choices, max_length) per row. The
    splits come back in torch format for ``input_ids``, ``attention_mask`` and ``label``.

    Example::

        tokenized = tokenize(load_task("piqa", max_examples=100), tokenizer, max_length=64)
        tokenized["train"][0]["input_ids"].shape    # torch.Size([2, 64])
    """
    if getattr(tokenizer, "pad_token", None) is None:
        raise DataError("the tokenizer has no padding token; set one first, e.g. tokenizer.pad_token = "
                        "tokenizer.eos_token")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 4:
        raise DataError(f"max_length must be an integer of at least 4 tokens, got {max_length!r}")
    encode = _encoder(data, tokenizer, max_length)
    out = datasets.DatasetDict()
    for name, split in data.splits.items():
        tokenized = split.map(encode, batched=True, batch_size=1000, keep_in_memory=True,
                              new_fingerprint=generate_random_fingerprint(), desc=f"tokenize {name}")
        kept = (*MODEL_INPUTS, *EXTRA_INPUTS, "label")
        tokenized.set_format("torch", columns=[c for c in kept if c in tokenized.column_names])
        out[name] = tokenized
    return out


def _to_batch(rows: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    inputs = {k: torch.as_tensor(rows[k], dtype=torch.long) for k in (*MODEL_INPUTS, *EXTRA_INPUTS) if k in rows}
    inputs = trim_left_padding(inputs)
    if any(k in inputs for k in EXTRA_INPUTS):  # a causal LM's right-padded continuations or responses
        inputs = trim_right_padding(inputs)
    if "label" not in rows:  # texts to predict, without labels
        return inputs, None
    labels = torch.as_tensor(rows["label"])
    return inputs, labels.float() if labels.is_floating_point() else labels.long()


def trim_left_padding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the leading positions that are padding in every row of the batch (left-padded prompts of a
    causal LM, padded to the split's ``max_length``): the batch is as long as its longest prompt. The
    kept positions, and so the outputs, are unchanged (rotary positions are relative); right-padded
    batches have no such positions and come back as they are."""
    mask = inputs["attention_mask"].flatten(0, -2)
    visible = mask.any(dim=0)
    first = int(visible.to(torch.int8).argmax()) if bool(visible.any()) else 0
    return inputs if first == 0 else {k: v[..., first:] for k, v in inputs.items()}


def trim_right_padding(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the trailing positions that are padding in every row of the batch: a causal LM's cloze choices and
    prompt-response pairs are right padded to the split's ``max_length``, and no earlier position attends to a
    later one, so the batch is as long as its longest row and every kept position's output is unchanged."""
    mask = inputs["attention_mask"].flatten(0, -2)
    visible = mask.any(dim=0)
    last = int(visible.nonzero().max()) + 1 if bool(visible.any()) else mask.shape[-1]
    return inputs if last == mask.shape[-1] else {k: v[..., :last] for k, v in inputs.items()}


def make_loader(tokenized: datasets.Dataset, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> DataLoader:
    """Batches ``(inputs, labels)`` of a tokenized split; the order is reproducible from ``seed``.

    ``inputs`` holds ``input_ids`` and ``attention_mask``, LongTensors (B, L), or (B, C, L) for
    multiple choice; ``labels`` is a LongTensor (B,), or a FloatTensor (B,) for regression, or None
    when the split has no ``label`` column (texts to predict). A label of -1 (NaN for regression)
    marks a row without a usable label (:func:`~pyro_bhpeft.data.files.load_eval_file`). Each pass
    over the loader draws the next shuffle from the same seeded generator, so a new loader with the
    same seed replays the same epochs.

    Example::

        for inputs, labels in make_loader(tokenized["train"], 16, shuffle=True, seed=0):
            logits = model(**inputs)
    """
    missing = [c for c in MODEL_INPUTS if c not in tokenized.column_names]
    if missing:
        raise DataError(f"the split has no {', '.join(missing)} column; tokenize it first with "
                        "pyro_bhpeft.data.tokenize(data, tokenizer)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    from ..distributed import world

    rank, world_size = world()
    if shuffle and world_size > 1:  # a data-parallel fit: each rank its share of every batch
        if batch_size % world_size:
            raise DataError(f"batch_size {batch_size} does not split over {world_size} processes; "
                            f"use a multiple of {world_size}")
        order, batch_size = _RankShare(tokenized, world_size, rank, seed), batch_size // world_size
    else:
        order = (RandomSampler(tokenized, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else SequentialSampler(tokenized))
    return DataLoader(tokenized, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None,
                      collate_fn=_to_batch, num_workers=0)


class _RankShare(DistributedSampler):
    """This rank's share of a seeded shuffle, a new shuffle on each pass (epoch)."""

    def __init__(self, data, world_size: int, rank: int, seed: int) -> None:
        super().__init__(data, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=False)

    def __iter__(self):
        order = list(super().__iter__())
        self.set_epoch(self.epoch + 1)
        return iter(order)
