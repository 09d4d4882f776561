"""Tiny real parts for command-line and comparison tests: a saved word-level BERT and labelled reviews."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = "good great fine bad awful poor movie plot actor film the a is was very not weather cold".split()


def save_tiny_backbone(folder: Path) -> str:
    """A tiny random BERT (hidden 32, 2 blocks) and a word-level tokenizer saved as a local model folder."""
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64)
        BertModel(config).save_pretrained(folder)
    return str(folder)


def reviews(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` one-sentence reviews, ``review`` text and ``sentiment`` neg/pos decided by the words used."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        label = int(torch.randint(0, 2, (1,), generator=g))
        words = ["good", "great", "fine"] if label else ["bad", "awful", "poor"]
        pick = [words[int(i)] for i in torch.randint(0, 3, (3,), generator=g)]
        rows.append({"review": f"the movie was very {' '.join(pick)}", "sentiment": ["neg", "pos"][label]})
    return pd.DataFrame(rows)
