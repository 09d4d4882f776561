"""Known answers: Bayesian linear regression fit through our machinery (model, guides, fit, posterior).

A fake "backbone" returns the features it is given as its hidden state, so ``Regressor`` with no PEFT
part, ``pooling="cls"`` and a known noise scale is exactly

    theta = (head.weight, head.bias) ~ N(m0 1, s^2 I),    y_n ~ N(x~_n . theta, sigma^2),   x~_n = (x_n, 1)

whose posterior is Gaussian with

    precision  L = I / s^2 + X~' X~ / sigma^2,    cov = L^-1,    mean = cov (m0 1 / s^2 + X~' y / sigma^2),

and whose maximum-likelihood point (kl_weight = 0) is least squares, (X~' X~)^-1 X~' y.
"""

from __future__ import annotations

import pytest
import torch

from helpers import FeatureBackbone
from pyro_bhpeft import PeftConfig, fit, priors
from pyro_bhpeft.guides import Delta, LowRank, MeanField
from pyro_bhpeft.models import Regressor

D, N, SIGMA, PRIOR_SCALE, PRIOR_LOC = 3, 40, 1.0, 1.0, -1.0
THETA = torch.tensor([8.0, -6.0, 14.0, 3.0], dtype=torch.float64)  # weights, then bias


def augmented(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def exact_posterior(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xa = augmented(x)
    precision = torch.eye(D + 1, dtype=x.dtype) / PRIOR_SCALE**2 + xa.T @ xa / SIGMA**2
    cov = torch.linalg.inv(precision)
    return cov @ (PRIOR_LOC * torch.ones(D + 1, dtype=x.dtype) / PRIOR_SCALE**2 + xa.T @ y / SIGMA**2), cov


def orthogonal_design() -> torch.Tensor:
    """Centred, mutually orthogonal columns of squared norms 1, 4, 0.25: X~'X~ and the posterior are diagonal."""
    z = torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))  # columns stay centred: they span the centred columns of z
    return q * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)


def correlated_design() -> torch.Tensor:
    """Correlated columns: the posterior covariance is full (correlations up to ~0.8)."""
    z = torch.randn(N, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mix = torch.tensor([[1.0, 0.7, 0.0], [0.0, 0.7, 0.7], [0.0, 0.0, 0.7]], dtype=torch.float64)
    return 0.6 * (z @ mix)


def targets(x: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return augmented(x) @ THETA + SIGMA * noise


def regressor() -> Regressor:
    return Regressor(FeatureBackbone(D), PeftConfig(lora=None), priors.Normal(PRIOR_SCALE, loc=PRIOR_LOC),
                     noise_scale=SIGMA, pooling="cls")


def batches(x: torch.Tensor, y: torch.Tensor, size: int = N) -> list:
    return [({"input_ids": x[i:i + size, None, :].float()}, y[i:i + size].float()) for i in range(0, N, size)]


def fitted_loc(posterior) -> torch.Tensor:
    m = posterior.marginals()
    return torch.cat([m["head.weight"].loc.reshape(-1), m["head.bias"].loc]).double()


def correlation(cov: torch.Tensor) -> torch.Tensor:
    sd = cov.diagonal().sqrt()
    return cov / torch.outer(sd, sd)


def test_the_designs_make_the_check_meaningful():
    x = orthogonal_design()
    gram = augmented(x).T @ augmented(x)
    assert torch.allclose(gram, torch.diag(torch.tensor([1.0, 4.0, 0.25, N], dtype=torch.float64)), atol=1e-10)
    for x in (orthogonal_design(), correlated_design()):
        y = targets(x)
        mean, cov = exact_posterior(x, y)
        sd = cov.diagonal().sqrt()
        assert ((mean - PRIOR_LOC).abs() / sd).min() > 3  # the data moved every site far from the prior
        least_squares = torch.linalg.lstsq(augmented(x), y).solution
        assert ((mean - least_squares).abs() / sd).max() > 3  # ... and the prior visibly pulls some back
        assert sd.max() / sd.min() > 2  # sites differ in scale: one shared scale cannot pass
    cov = exact_posterior(correlated_design(), targets(correlated_design()))[1]
    assert correlation(cov).triu(1).abs().max() > 0.7  # a diagonal covariance would fail the low-rank check


def test_mean_field_matches_the_exact_diagonal_posterior():
    x = orthogonal_design()
    y = targets(x)
    mean, cov = exact_posterior(x, y)
    sd = cov.diagonal().sqrt()
    model = regressor()
    result = fit(model, MeanField(model, init_scale=0.1), batches(x, y), num_data=N, epochs=600, lr=0.2,
                 final_lr_factor=0.005, clip_norm=None, num_particles=4, progress=False)
    marginals = result.posterior.marginals()
    loc = fitted_loc(result.posterior)
    scale = torch.cat([marginals["head.weight"].scale.reshape(-1), marginals["head.bias"].scale]).double()
    # Over fit seeds 0-9 the largest errors were 0.05 sd (means) and 7.5% (scales): Monte Carlo noise of the
    # single-draw gradient, zero-mean across seeds, shrinking with more particles. Re-measured (seeds 0-2):
    # scales up to 9.4% off at these settings, 5.0% with 32 particles, 2.2% with 32 particles and 1500 epochs
    # (2 minutes a fit here): the 10% tolerance has almost no margin; see the clean-up report.
    assert ((loc - mean).abs() <= 0.1 * sd).all(), ((loc - mean) / sd)
    assert torch.allclose(scale, sd, rtol=0.1), (scale / sd)


def test_low_rank_matches_the_exact_full_covariance():
    x = correlated_design()
    y = targets(x)
    mean, cov = exact_posterior(x, y)
    sd = cov.diagonal().sqrt()
    model = regressor()
    guide = LowRank(model, rank=D + 1, init_scale=0.1)
    fit(model, guide, batches(x, y), num_data=N, epochs=2000, lr=0.2, final_lr_factor=0.003, clip_norm=None,
        progress=False)
    with torch.no_grad():
        q = guide.get_posterior()
        loc, got = q.loc.double(), q.covariance_matrix.double()
    # Correlated sites converge slowly under Adam (an ill-conditioned valley): 2000 steps are needed for the
    # means; over fit seeds 0-7 the largest errors were 0.09 sd, 7% on scales and 0.09 on correlations.
    assert ((loc - mean).abs() <= 0.1 * sd).all(), ((loc - mean) / sd)
    assert torch.allclose(got.diagonal().sqrt(), sd, rtol=0.1), (got.diagonal().sqrt() / sd)
    assert torch.allclose(correlation(got), correlation(cov), atol=0.1), (correlation(got) - correlation(cov))


@pytest.mark.parametrize("kl_weight", [0.0, 1.0])
def test_point_mass_on_minibatches_finds_least_squares_or_the_posterior_mean(kl_weight):
    """kl_weight=0 is maximum likelihood (least squares); 1 is MAP, the posterior mean of this Gaussian model.

    Two minibatches of 20 out of 40: MAP is only right if the likelihood is scaled by N / batch.
    """
    x = orthogonal_design()
    y = targets(x)
    mean, cov = exact_posterior(x, y)
    sd = cov.diagonal().sqrt()
    expected = torch.linalg.lstsq(augmented(x), y).solution if kl_weight == 0 else mean
    model = regressor()
    result = fit(model, Delta(model), batches(x, y, N // 2), num_data=N, epochs=400, lr=0.5, final_lr_factor=0.002,
                 kl_weight=kl_weight, clip_norm=None, progress=False)
    assert ((fitted_loc(result.posterior) - expected).abs() <= 0.01 * sd).all()
