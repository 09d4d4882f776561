"""Shared fixtures: fixed seeds, clean Pyro state, tiny random backbones built from configs."""

from __future__ import annotations

import pyro
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

VOCAB = 60


@pytest.fixture(autouse=True)
def _seed_and_clean_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.set_num_threads(2)
    yield
    pyro.clear_param_store()


def tiny_bert() -> BertModel:
    torch.manual_seed(1234)
    return BertModel(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64)).eval()


def tiny_llama() -> LlamaModel:
    torch.manual_seed(1234)
    return LlamaModel(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)).eval()


BACKBONES = {"bert": tiny_bert, "llama": tiny_llama}


@pytest.fixture(params=list(BACKBONES))
def backbone_name(request):
    return request.param
