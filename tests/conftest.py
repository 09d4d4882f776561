"""Shared fixtures: fixed seeds, clean Pyro state, tiny random backbones built from configs.

Backbones are tiny and random (hidden 32, 2 blocks) and built under a fixed seed, so two calls give
bit-identical weights while each call is a fresh model (PEFT injection mutates a backbone).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

VOCAB = 60
BACKBONE_SEED = 1234


@pytest.fixture(autouse=True)
def _seed_and_clean_pyro():
    """Every test starts from seed 0 with an empty param store, and leaves none behind.

    One intra-op thread: these models are tiny, and on a shared 2-core machine a second OpenMP
    thread makes a step 5-50x slower (spin-waiting on a busy core) without changing any result.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # torch, numpy and random
    yield
    pyro.clear_param_store()
    torch.set_num_threads(threads)


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


@pytest.fixture(params=list(BACKBONES))
def backbone_name(request):
    return request.param


@pytest.fixture
def make_bert() -> Callable[[], BertModel]:
    """Factory: a fresh tiny BERT per call, identical weights every time."""
    return tiny_bert


@pytest.fixture
def make_llama() -> Callable[[], LlamaModel]:
    """Factory: a fresh tiny Llama per call, identical weights every time."""
    return tiny_llama


@pytest.fixture
def make_backbone() -> Callable[[str], torch.nn.Module]:
    """Factory by family name: ``make_backbone("bert")`` or ``make_backbone("llama")``."""
    return lambda family: BACKBONES[family]()


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


@pytest.fixture
def make_tokens() -> Callable[..., dict[str, torch.Tensor]]:
    """Factory for :func:`token_batch`."""
    return token_batch


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """Path of a saved tiny BERT with a word-level tokenizer (see tests/tiny.py), for CLI-level tests."""
    from tiny import save_tiny_backbone

    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))
