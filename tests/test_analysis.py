"""ArviZ conversion and the variational diagnostics on a model whose posterior is known."""

from __future__ import annotations

import arviz as az

from helpers import D, N, make_model, regression_data
from pyro_bhpeft import fit, priors
from pyro_bhpeft.analysis import pareto_khat, scale_table, to_inference_data
from pyro_bhpeft.guides import LowRank, MeanField


def _fit(guide_factory, steps):
    x, y = regression_data()
    model = make_model(priors.Normal(2.0))
    data = [({"input_ids": x[:N, None, :]}, y[:N])]
    result = fit(model, guide_factory(model), data, num_data=N, epochs=steps, lr=5e-2, final_lr_factor=0.1,
                 clip_norm=None, progress=False)
    return result.posterior, data


def test_inference_data_groups_dims_and_arviz_functions():
    posterior, data = _fit(lambda m: MeanField(m, init_scale=0.1), 50)
    idata = to_inference_data(posterior, data, num_samples=40)
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "sample_stats"}
    assert idata.posterior["head.weight"].dims == ("chain", "draw", "head.weight_dim_0", "head.weight_dim_1")
    assert idata.posterior["head.weight"].shape == (1, 40, 1, D)
    assert "head.weight|rms" in idata.posterior
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "example")
    assert idata.observed_data["y"].shape == (N,)
    assert idata.sample_stats["log_p"].shape == idata.sample_stats["log_q"].shape == (1, 40)
    summary = az.summary(idata, var_names=["head.bias"], kind="stats")
    assert len(summary) == 1
    rows = scale_table(posterior)
    assert {r.site for r in rows} == {"head.weight", "head.bias"} and all(r.prior_scale == 2.0 for r in rows)


def test_khat_small_for_a_near_exact_guide_and_large_for_a_bad_one():
    good, data = _fit(lambda m: LowRank(m, rank=D + 1, init_scale=0.1), 1000)
    k_good = pareto_khat(to_inference_data(good, data, num_samples=200))
    bad, _ = _fit(lambda m: MeanField(m, init_scale=1e-3), 1)  # far too narrow and in the wrong place
    k_bad = pareto_khat(to_inference_data(bad, data, num_samples=200))
    assert k_good.k < 0.5 and k_good.reliable, k_good
    assert k_bad.k > 0.7 and not k_bad.reliable, k_bad
    assert "trustworthy" in str(k_good)
