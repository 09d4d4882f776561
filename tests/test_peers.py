"""Peers through the libraries users would pick: IVON (ivon-opt) reaches the exact posterior of Bayesian linear
regression, and our ECE, NLL and Brier read the same as torchmetrics' (the numbers of BLoB's and BAG's tables)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import D, NOISE, regression_data

from pyro_bhpeft.analysis import metrics
from pyro_bhpeft.baselines import ivon_optimizer


def test_ivon_reaches_the_exact_posterior_of_bayesian_linear_regression():
    x, y = regression_data(0)
    n, prior_precision = len(y), 1.0
    features = torch.cat([x, torch.ones(n, 1)], 1)
    precision = features.T @ features / NOISE ** 2 + prior_precision * torch.eye(D + 1)
    mean = torch.linalg.solve(precision, features.T @ y / NOISE ** 2)
    sd = torch.linalg.inv(precision).diag().sqrt()
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.zeros(D + 1))
    # the IVON-LoRA settings, with a learning rate and beta2 for a 4-weight problem and the prior as weight decay
    optimizer = ivon_optimizer([w], n, lr=0.1, hess_init=1.0, beta2=0.999, weight_decay=prior_precision / n,
                               clip_radius=float("inf"))
    for _ in range(3000):
        with optimizer.sampled_params(train=True):
            optimizer.zero_grad()
            (((y - features @ w) ** 2).mean() / (2 * NOISE ** 2)).backward()
        optimizer.step()
    ivon_sd = 1 / (n * (optimizer.param_groups[0]["hess"] + prior_precision / n)).sqrt()
    assert ((w.detach() - mean).abs() < 0.5 * sd).all()  # the posterior mean, to half a posterior sd
    torch.testing.assert_close(ivon_sd, sd, rtol=0.15, atol=0)  # the diagonal of the posterior, within 15 %


@pytest.mark.parametrize("classes", [2, 5])
def test_ece_nll_and_brier_read_as_torchmetrics(classes):
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(400, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, classes, 400)
    p, y = torch.tensor(probs), torch.tensor(labels)
    reference = tm.multiclass_calibration_error(p, y, num_classes=classes, n_bins=15, norm="l1")
    assert metrics.ece(probs, labels) == pytest.approx(100 * float(reference), abs=1e-4)  # torchmetrics: float32
    assert metrics.nll(probs, labels) == pytest.approx(float(torch.nn.functional.nll_loss(p.log(), y)), abs=1e-9)
    onehot = torch.nn.functional.one_hot(y, classes).double()
    assert metrics.brier(probs, labels) == pytest.approx(float(((p - onehot) ** 2).sum(1).mean()), abs=1e-9)


# ---- Laplace-LoRA through laplace-torch ---------------------------------------------------------------------
class _Linear(torch.nn.Module):
    """A linear-softmax model as laplace-torch calls ours: one dict in, logits out."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(weight)

    def forward(self, inputs):
        return self.lin(inputs["input_ids"])  # the key laplace-torch reads a dict batch's size from


def test_kfac_glm_predictive_matches_the_closed_form_of_a_linear_softmax_model():
    # One example x (repeated: KFAC is then exact for a bias-free linear layer): the GGN is
    # (diag p - p p^T) (x) x x^T per copy; the marginal likelihood's scalar prior precision d satisfies
    # d = P / (|w|^2 + tr S), S = (GGN + d I)^-1; at a test point z the logits are N(W z, (I (x) z^T) S (I (x) z)).
    pytest.importorskip("laplace")
    from pyro_bhpeft.baselines import laplace_torch_fit, laplace_torch_predict

    g = torch.Generator().manual_seed(0)
    classes, dim, copies = 2, 3, 4
    weight, x = torch.randn(classes, dim, generator=g) * 0.5, torch.randn(1, dim, generator=g)
    data = [({"input_ids": x.expand(copies, dim)}, torch.tensor([0, 1, 1, 0]))]
    fit = laplace_torch_fit(_Linear(weight), data, structure="kron")
    p = (x @ weight.T).softmax(-1)[0]
    ggn = copies * torch.kron(torch.diag(p) - torch.outer(p, p), x.T @ x)  # row-major vec(W)
    params = classes * dim
    delta = fit.prior_precision
    cov = torch.linalg.inv(ggn + delta * torch.eye(params))
    assert delta == pytest.approx(params / (weight.square().sum() + cov.trace()), rel=1e-3)
    z = torch.randn(5, dim, generator=g)
    jac = torch.stack([torch.kron(torch.eye(classes), row[None]) for row in z])  # (5, C, P)
    f_var = jac @ cov @ jac.transpose(1, 2)
    f_mu = z @ weight.T
    probit = laplace_torch_predict(fit, [({"input_ids": z}, torch.zeros(5, dtype=torch.long))], link="probit").probs
    torch.testing.assert_close(probit, (f_mu / (1 + torch.pi / 8 * f_var.diagonal(dim1=1, dim2=2)).sqrt()).softmax(-1),
                               rtol=1e-4, atol=1e-5)
    # MC with the authors' 100,000 logit draws: E[sigmoid(f_0 - f_1)] by Gauss-Hermite quadrature
    mc = laplace_torch_predict(fit, [({"input_ids": z}, torch.zeros(5, dtype=torch.long))], link="mc", seed=1)
    nodes, weights_ = np.polynomial.hermite_e.hermegauss(80)
    m = (f_mu[:, 0] - f_mu[:, 1]).double().numpy()
    s = (f_var[:, 0, 0] + f_var[:, 1, 1] - 2 * f_var[:, 0, 1]).double().sqrt().numpy()
    exact = (weights_ / weights_.sum() / (1 + np.exp(-(m[:, None] + s[:, None] * nodes)))).sum(1)
    np.testing.assert_allclose(mc.probs[:, 0].numpy(), exact, atol=4e-3)
    assert (mc.mutual_information > 0).all() and (probit.sum(-1) - 1).abs().max() < 1e-6


def test_a_kept_laplace_fit_loads_and_predicts_as_the_fitted_one(tmp_path):
    pytest.importorskip("laplace")
    from pyro_bhpeft.baselines import LaplaceTorchFit, laplace_torch_fit, laplace_torch_predict

    g = torch.Generator().manual_seed(1)
    weight = torch.randn(3, 4, generator=g)
    data = [({"input_ids": torch.randn(8, 4, generator=g)}, torch.arange(8) % 3) for _ in range(2)]
    for structure in ("kron", "diag"):
        fit = laplace_torch_fit(_Linear(weight), data, structure=structure, marglik_steps=50)
        fit.write_to(tmp_path)
        loaded = LaplaceTorchFit.load(_Linear(weight), tmp_path)
        assert (loaded.structure, loaded.prior_precision, loaded.examples) == (structure, fit.prior_precision, 16)
        a, b = (laplace_torch_predict(f, data, link="probit").probs for f in (fit, loaded))
        torch.testing.assert_close(a, b)
        plain = (data[0][0]["input_ids"] @ weight.T).softmax(-1)
        assert (a[:8].max(-1).values < plain.max(-1).values).all()  # the probit tempers every prediction


@pytest.mark.parametrize("kind", ["classifier", "multiple_choice"])
def test_our_diagonal_ggn_equals_laplace_torchs(kind, make_bert, make_tokens):
    # the same LoRA and head weights in our model and in the peft model laplace-torch sees
    pytest.importorskip("laplace")
    pytest.importorskip("peft")
    from test_baselines import LORA, batches, random_model

    from pyro_bhpeft.baselines import PeftLoraModel, ggn_diagonal, laplace_torch_fit

    ours, choices, weights = random_model(kind, make_bert, seed=5)
    theirs = PeftLoraModel(make_bert(), LORA.lora, None if choices else 3, "mean")
    params = dict(theirs.named_parameters())
    target = {n: f"head.{n.split('.')[-1]}" if n.startswith("head.") else f"body.base_model.model.{n}.default.weight"
              for n in weights}
    with torch.no_grad():
        for name, value in weights.items():
            params[target[name]].copy_(value)
    data = batches(make_tokens, n=2, size=3, choices=choices)
    ggn, seen = ggn_diagonal(ours, weights, data, max_examples=6)
    fit = laplace_torch_fit(theirs, data, structure="diag", marglik_steps=1)
    assert seen == fit.examples == 6
    offsets, start = {}, 0
    for name, param in theirs.named_parameters():
        if param.requires_grad:
            offsets[name] = (start, param.shape)
            start += param.numel()
    # the per-example Jacobians every GLM prediction uses equal the library's batched ones
    from laplace.curvature import CurvlinopsGGN

    inputs = dict(data[0][0])
    ours_j, ours_f = fit.laplace.backend.jacobians(inputs)
    lib_j, lib_f = CurvlinopsGGN.jacobians(fit.laplace.backend, inputs)
    finite = torch.isfinite(lib_f)
    assert torch.equal(finite, torch.isfinite(ours_f)) and ours_j.shape == lib_j.shape
    torch.testing.assert_close(ours_f[finite], lib_f[finite], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_j, lib_j.nan_to_num(), rtol=1e-4, atol=1e-6)
    for name, value in ggn.items():
        begin, shape = offsets[target[name]]
        theirs_diag = fit.laplace.H[begin:begin + value.numel()].reshape(shape)
        torch.testing.assert_close(theirs_diag, value, rtol=1e-4, atol=1e-6)
