"""Tokenisation and batching: task splits -> ``(inputs, labels)`` batches for the models."""

from __future__ import annotations

import datasets
import torch
from torch.utils.data import DataLoader

from .types import TaskData

__all__ = ["tokenize", "make_loader"]


def tokenize(data: TaskData, tokenizer, max_length: int = 64) -> datasets.DatasetDict:
    """Add ``input_ids`` and ``attention_mask`` (padded to ``max_length``) to every split.

    Multiple choice pairs the question with each choice: ids of shape (choices, max_length) per row.
    """
    mc = data.spec.kind == "multiple_choice"

    def encode(batch):
        if mc:
            n = len(batch["choices"][0])
            firsts = [q for q in batch["question"] for _ in range(n)]
            seconds = [c for choices in batch["choices"] for c in choices]
            enc = tokenizer(firsts, seconds, truncation="longest_first", max_length=max_length, padding="max_length")
            return {k: [enc[k][i:i + n] for i in range(0, len(seconds), n)] for k in ("input_ids", "attention_mask")}
        enc = tokenizer(batch["text"], truncation=True, max_length=max_length, padding="max_length")
        return {k: enc[k] for k in ("input_ids", "attention_mask")}

    out = datasets.DatasetDict()
    for name, split in data.splits.items():
        tokenized = split.map(encode, batched=True, batch_size=512, desc=f"tokenize {name}")
        tokenized.set_format("torch", columns=["input_ids", "attention_mask", "label"])
        out[name] = tokenized
    return out


def _collate(rows):
    inputs = {k: torch.stack([r[k] for r in rows]) for k in ("input_ids", "attention_mask")}
    labels = torch.stack([r["label"] for r in rows])
    return inputs, labels.float() if labels.is_floating_point() else labels


def make_loader(tokenized: datasets.Dataset, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> DataLoader:
    """Batches ``(inputs, labels)``; shuffling is reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(tokenized, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=_collate, num_workers=0)
