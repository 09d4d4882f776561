"""Shared test helpers, imported by test modules as ``from helpers import ...`` (test modules never import
each other or ``conftest``; ``conftest`` turns some of these into fixtures).

* tiny random backbones built from configs under a fixed seed (:func:`tiny_bert`, :func:`tiny_llama`) and
  random token batches (:func:`token_batch`);
* a saved tiny BERT with a word-level tokenizer and labelled reviews, for command-line and comparison
  tests (:func:`save_tiny_backbone`, :func:`reviews`);
* a "backbone" that returns its float input as the hidden state, so a head on it is Bayesian linear
  regression with a closed-form posterior (:class:`FeatureBackbone`, :func:`regression_data`,
  :func:`make_model`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizerFast, LlamaConfig, LlamaModel

# ---- tiny random backbones ---------------------------------------------------------------------------
VOCAB = 60
BACKBONE_SEED = 1234


def _built_with_seed(build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):  # fixed weights without disturbing the test's RNG stream
        torch.manual_seed(BACKBONE_SEED)
        return build().eval()


def tiny_bert() -> BertModel:
    """BERT, hidden 32, 2 layers, 4 heads (head_dim 8), intermediate 64, vocab 60."""
    return _built_with_seed(lambda: BertModel(BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64)))


def tiny_llama() -> LlamaModel:
    """Llama, hidden 32, 2 layers, 4 query heads and 2 key/value heads (head_dim 8), intermediate 64."""
    return _built_with_seed(lambda: LlamaModel(LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64)))


BACKBONES = {"bert": tiny_bert, "llama": tiny_llama}


def token_batch(n: int = 6, seq: int = 7, *, choices: int | None = None, pad: int = 2, seed: int = 0
                ) -> dict[str, torch.Tensor]:
    """Random token ids (avoiding the low special ids) with the last ``pad`` positions padded.

    Shapes are (n, seq), or (n, choices, seq) for multiple choice.
    """
    g = torch.Generator().manual_seed(seed)
    shape = (n, seq) if choices is None else (n, choices, seq)
    ids = torch.randint(5, VOCAB, shape, generator=g)
    mask = torch.ones_like(ids)
    if pad:
        mask[..., seq - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# ---- a saved tiny model and the user's own files ------------------------------------------------------
WORDS = "good great fine bad awful poor movie plot actor film the a is was very not weather cold".split()


def save_tiny_backbone(folder: Path) -> str:
    """A tiny random BERT (hidden 32, 2 blocks) and a word-level tokenizer saved as a local model folder."""
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab=str(vocab)).save_pretrained(folder)  # transformers 5 ignores vocab_file=: all [UNK]
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


# ---- Bayesian linear regression through the models ------------------------------------------------------
D, N, NOISE = 3, 40, 0.5  # features, examples per round, noise scale of make_model's regression


class FeatureBackbone(nn.Module):
    """A 'backbone' whose hidden state is the given features: the head is then Bayesian linear regression."""

    def __init__(self, dim: int = D) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=dim, is_decoder=False, architectures=None)
        self.anchor = nn.Parameter(torch.zeros(1))  # a frozen weight, so the model knows its device

    def forward(self, input_ids, attention_mask=None):
        if not input_ids.is_floating_point():  # the models' dummy batch of token ids
            input_ids = torch.zeros(input_ids.shape[0], 1, self.config.hidden_size)
        return SimpleNamespace(last_hidden_state=input_ids)  # (batch, 1, dim)


def regression_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``2 N`` examples (x (2N, D), y (2N,)) of y = x . (1.5, -2, 0.7) + 0.8 + NOISE * eps."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * N, D, generator=g)
    w = torch.tensor([1.5, -2.0, 0.7])
    y = x @ w + 0.8 + NOISE * torch.randn(2 * N, generator=g)
    return x, y


def make_model(prior):
    """A ``Regressor`` head on :class:`FeatureBackbone` with known noise ``NOISE``: Bayesian linear regression."""
    from pyro_bhpeft import PeftConfig
    from pyro_bhpeft.models import Regressor

    return Regressor(FeatureBackbone(), PeftConfig(lora=None), prior, noise_scale=NOISE, pooling="cls")


# ---- a saved tiny causal LM with a byte-level BPE tokenizer ---------------------------------------------
PROMPT_WORDS = ("Question: Which of these is a metal or a wood or a stone? Answer: A B C D E true false "
                "iron oak granite copper pine marble Goal: the a is was it does do can Which ending completes "
                "the sentence? ... yes no")


def save_tiny_causal_lm(folder: Path, *, tied: bool = False) -> str:
    """A tiny random Llama causal LM (hidden 32, 2 blocks; its LM head untied unless ``tied``) and a byte-level
    BPE tokenizer trained on prompt words (so " A" .. " E", " true", " false" are single tokens), saved as a
    local model folder that ``load_backbone`` reads."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([PROMPT_WORDS] * 20, vocab_size=400, min_frequency=1, special_tokens=["<pad>", "<s>"],
                            show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>")
    tokenizer.save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                             tie_word_embeddings=tied, pad_token_id=0)
        LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


# ---- a toy multiple-choice task (three choices) -----------------------------------------------------------
QUESTIONS = ["Which is a metal?", "Which is a wood?", "Which is a stone?", "Which is a metal or a stone?"]
CHOICES = [["iron", "oak", "granite"], ["copper", "pine", "marble"], ["iron", "pine", "granite"],
           ["oak", "pine", "copper"]]
LABELS = [0, 1, 2, 2]


def quiz(name: str = "quiz", n: int = 4):
    """Four three-choice questions as a multiple-choice TaskData, the same rows in every split."""
    import datasets

    from pyro_bhpeft.data import TaskData, TaskSpec
    from pyro_bhpeft.data.types import features_for

    spec = TaskSpec(name, "multiple_choice", num_choices=3)
    rows = {"question": QUESTIONS[:n], "choices": CHOICES[:n], "label": LABELS[:n]}
    split = datasets.Dataset.from_dict(rows, features=features_for(spec))
    return TaskData(spec, datasets.DatasetDict({"train": split, "validation": split, "test": split}))


# ---- the command line as a user meets it -------------------------------------------------------------------
def error_line(capsys) -> str:
    """The last line a failed command printed on stderr (one line, no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


def fit_args(backbone, train, out, *extra) -> list:
    """``pyro-bhpeft fit`` on a reviews CSV (see :func:`reviews`) with a tiny backbone: two quick steps."""
    return ["fit", "--train", train, "--text-column", "review", "--label-column", "sentiment", "--backbone", backbone,
            "--max-steps", 2, "--batch-size", 8, "--max-length", 16, "--out", out, *extra]
