"""The language model's response-only loss: the LM head runs on the response's positions alone, and gives the
same log-probabilities there, zero elsewhere, and the same gradient as scoring every position and masking."""

from __future__ import annotations

import pytest
import torch

from helpers import save_tiny_causal_lm
from pyro_bhpeft.backbone import load_backbone
from pyro_bhpeft.models.lm import token_logprobs


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_backbone(str(save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm")))).model


def test_response_positions_only_give_the_full_log_probabilities_there_and_zero_elsewhere(lm):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, lm.config.vocab_size, (3, 9), generator=g)
    where = torch.zeros(3, 8, dtype=torch.bool)
    where[0, 4:] = True
    where[1, 2:6] = True  # row 2: no response token at all
    hidden = lm(input_ids=ids).last_hidden_state.detach().requires_grad_(True)
    full = token_logprobs(lm, hidden, ids)
    only = token_logprobs(lm, hidden, ids, where=where)
    torch.testing.assert_close(only[where], full[where])
    assert only.shape == full.shape and not only[~where].any()
    (grad_only,) = torch.autograd.grad((only * where).sum(), hidden)
    (grad_full,) = torch.autograd.grad((full * where).sum(), hidden)
    torch.testing.assert_close(grad_only, grad_full)
