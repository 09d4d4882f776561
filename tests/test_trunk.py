"""Sharing the trunk: with variance only in the top blocks, running the lower blocks once and folding the draws
through the rest gives the per-draw forwards' outputs, and the predictions of the full sampler."""

from __future__ import annotations

import pytest
import torch

from helpers import tiny_bert, tiny_llama, token_batch
from pyro_bhpeft import PeftConfig, Posterior, priors
from pyro_bhpeft.guides import MeanField
from pyro_bhpeft.models import SequenceClassifier
from pyro_bhpeft.predict import predict
from pyro_bhpeft.trunk import first_random_block, lower_block_sites, shared_trunk_outputs, shared_trunk_predict


def _posterior(make, peft: PeftConfig, random_blocks: int | None) -> Posterior:
    model = SequenceClassifier(make(), peft, priors.Normal(1.0), num_labels=3)
    fixed = lower_block_sites(model, random_blocks) if random_blocks is not None else ()
    guide = MeanField(model, init_scale=0.05, deterministic=fixed)
    return Posterior(model, guide)


@pytest.mark.parametrize("make", [tiny_bert, tiny_llama], ids=["bert", "llama"])
@pytest.mark.parametrize("peft", [PeftConfig(), PeftConfig.hybrid(r=2, bottleneck=4, prefix_length=3)],
                         ids=["lora", "hybrid"])
def test_shared_trunk_equals_per_draw_forwards(make, peft):
    posterior = _posterior(make, peft, random_blocks=1)
    assert first_random_block(posterior) == 1  # tiny models have 2 blocks: block 0 is shared
    draws = posterior.sample(4, seed=0)
    assert not torch.equal(draws[0]["head.weight"], draws[1]["head.weight"])
    batch = token_batch(n=5, seq=7)
    shared = shared_trunk_outputs(posterior.model, draws, batch, first=1)
    for out, weights in zip(shared, draws):
        torch.testing.assert_close(out, posterior.model.run(weights, batch), rtol=0, atol=1e-5)


def test_shared_trunk_predict_is_the_full_sampler():
    posterior = _posterior(tiny_bert, PeftConfig(), random_blocks=1)
    data = [(token_batch(n=4, seq=7, seed=s), torch.zeros(4, dtype=torch.long)) for s in (0, 1)]
    shared = shared_trunk_predict(posterior, data, num_samples=6, seed=3)
    full = predict(posterior, data, num_samples=6, seed=3)
    torch.testing.assert_close(shared.probs, full.probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(shared.mutual_information, full.mutual_information, rtol=0, atol=1e-5)


def test_nothing_to_share_when_every_block_is_random():
    posterior = _posterior(tiny_bert, PeftConfig(), random_blocks=None)
    assert first_random_block(posterior) == 0
