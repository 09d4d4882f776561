"""Shared fixtures: fixed seeds, clean Pyro state, tiny random backbones built from configs.

Backbones are tiny and random (hidden 32, 2 blocks) and built under a fixed seed, so two calls give
bit-identical weights while each call is a fresh model (PEFT injection mutates a backbone). The helpers
behind the fixtures live in ``helpers.py``, which test modules import directly.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pytest
import torch
from transformers import BertModel, LlamaModel

from helpers import BACKBONES, save_tiny_backbone, tiny_bert, tiny_llama, token_batch


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


@pytest.fixture
def make_tokens() -> Callable[..., dict[str, torch.Tensor]]:
    """Factory for :func:`token_batch`."""
    return token_batch


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """Path of a saved tiny BERT with a word-level tokenizer (see helpers.py), for CLI-level tests."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))
