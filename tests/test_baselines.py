"""Baselines with known answers: the GGN of a linear softmax head, the Laplace evidence maximiser,
temperature recovery, ensemble/MC-dropout predictive identities, peft LoRA == our LoRA, and the
multiple-choice helpers that our model and the peft baseline share."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from pyro_bhpeft import LoraConfig, PeftConfig, Posterior, predict
from pyro_bhpeft.backbone import dropout_active
from pyro_bhpeft.baselines import (PeftLoraModel, ensemble_predict, fit_temperature, ggn_diagonal, laplace_posterior,
                                   linearised_predict, mc_dropout_predict, peft_predict, tempered, train_peft_lora)
from pyro_bhpeft.baselines.temperature import MAX_TEMPERATURE
from pyro_bhpeft.guides import Delta, MeanField
from pyro_bhpeft.models import MultipleChoice, SequenceClassifier
from pyro_bhpeft.models.base import pool
from pyro_bhpeft.models.classifier import choice_scores, flatten_choices
from pyro_bhpeft.predict import class_prediction

LORA = PeftConfig(lora=LoraConfig(r=2, target_modules=("query", "value")))


def point_posterior(model, weights=None) -> Posterior:
    """A point-mass posterior at ``weights`` (guides start at ``model.initial_values()``)."""
    if weights is not None:
        model.initial_values = lambda: {k: v.clone() for k, v in weights.items()}
    return Posterior(model, Delta(model))


def batches(make_tokens, n=3, size=4, choices=None, classes=3):
    g = torch.Generator().manual_seed(7)
    return [(make_tokens(size, seq=6, choices=choices, seed=i), torch.randint(0, choices or classes, (size,), generator=g))
            for i in range(n)]


def random_model(kind, make_bert, seed, scale=0.3):
    """A classifier (3 labels) or 3-choice model, its number of choices (None for the classifier) and
    random weights for every site (non-zero LoRA A *and* B)."""
    choices = 3 if kind == "multiple_choice" else None
    model = SequenceClassifier(make_bert(), LORA, num_labels=3) if choices is None else MultipleChoice(make_bert(), LORA)
    g = torch.Generator().manual_seed(seed)
    return model, choices, {n: torch.randn(v.shape, generator=g) * scale for n, v in model.initial_values().items()}


def test_ggn_of_the_head_matches_the_linear_softmax_closed_form(make_bert, make_tokens):
    # With LoRA's B at zero the features are the frozen backbone's pooled output x, and for a linear
    # softmax head the GGN diagonal is p_c (1 - p_c) x_d^2 for weight (c, d) and p_c (1 - p_c) for bias c.
    model = SequenceClassifier(make_bert(), LORA, num_labels=3)
    weights = model.initial_values()
    weights["head.weight"] = torch.randn(3, 32) * 0.5
    data = batches(make_tokens)
    ggn, seen = ggn_diagonal(model, weights, data, max_examples=10)
    assert seen == 10
    inputs = {k: torch.cat([b[0][k] for b in data])[:10] for k in data[0][0]}
    with torch.no_grad():
        x = pool(model.backbone(**inputs).last_hidden_state, inputs["attention_mask"], "mean")
        p = F.softmax(x @ weights["head.weight"].T + weights["head.bias"], -1)
    curvature = p * (1 - p)
    torch.testing.assert_close(ggn["head.weight"], curvature.T @ x.square(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ggn["head.bias"], curvature.sum(0), rtol=1e-4, atol=1e-6)
    # LoRA's A gets no curvature while B = 0 (A does not move the output); B does.
    a_names = [n for n in ggn if n.endswith("lora_A")]
    assert a_names and all(ggn[n].abs().max() == 0 for n in a_names)
    assert all(ggn[n.replace("lora_A", "lora_B")].sum() > 0 for n in a_names)


def test_laplace_picks_the_evidence_maximiser_and_builds_the_gaussian(make_bert, make_tokens, tmp_path):
    model = SequenceClassifier(make_bert(), LORA, num_labels=3)
    point = point_posterior(model)
    data = batches(make_tokens)
    fit = laplace_posterior(point, data, num_data=120, max_examples=8)
    assert fit.examples == 8
    assert fit.log_evidence[fit.grid.index(fit.prior_precision)] == max(fit.log_evidence)
    # not a grid edge: the evidence has an interior maximum here
    assert fit.grid[0] < fit.prior_precision < fit.grid[-1]
    center = point.mean()
    ggn, _ = ggn_diagonal(model, center, data, max_examples=8)
    marginals = fit.posterior.marginals()
    for name, value in center.items():
        torch.testing.assert_close(marginals[name].loc, value)
        expected = (ggn[name] * 120 / 8 + fit.prior_precision).rsqrt()
        torch.testing.assert_close(marginals[name].scale, expected, rtol=1e-4, atol=1e-7)
    assert fit.posterior.model.prior.scale == pytest.approx(fit.prior_precision ** -0.5)
    # an ordinary mean-field posterior: it saves and reloads to the same predictions
    fit.posterior.save(tmp_path / "laplace")
    again = Posterior.load(tmp_path / "laplace", backbone=make_bert())
    a = predict(fit.posterior, data, num_samples=4, seed=1).probs
    b = predict(again, data, num_samples=4, seed=1).probs
    torch.testing.assert_close(a, b)


def test_more_data_narrows_the_laplace_posterior(make_bert, make_tokens):
    model = SequenceClassifier(make_bert(), LORA, num_labels=3)
    point, data = point_posterior(model), batches(make_tokens)
    grid = [1.0]
    small = laplace_posterior(point, data, num_data=10, max_examples=8, grid=grid).posterior.marginals()
    large = laplace_posterior(point, data, num_data=10_000, max_examples=8, grid=grid).posterior.marginals()
    assert all((large[n].scale <= small[n].scale).all() for n in small)
    assert large["head.bias"].scale.max() < small["head.bias"].scale.min()


def test_temperature_of_a_model_at_chance_is_bounded_and_keeps_every_argmax():
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(400, 4, generator=g) * 2, -1)
    labels = torch.randint(0, 4, (400,), generator=g)  # independent of the predictions: the optimum is T -> inf
    temperature = fit_temperature(probs, labels)
    assert temperature == MAX_TEMPERATURE
    close = torch.tensor([[0.3326, 0.3381, 0.1184, 0.2109]])  # top two 0.016 apart in log-probability
    pred = class_prediction(torch.cat([close, probs])[None], torch.cat([torch.tensor([1]), labels]))
    hot = tempered(pred, temperature)
    torch.testing.assert_close(hot.probs, torch.full_like(hot.probs, 0.25), atol=0.02, rtol=0)
    assert torch.equal(hot.probs.argmax(-1), pred.probs.argmax(-1))


def test_temperature_scaling_recovers_the_temperature_that_generated_the_labels():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 3, generator=g) * 3
    labels = torch.multinomial(F.softmax(logits / 2.5, -1), 1, generator=g).squeeze(1)
    assert fit_temperature(F.softmax(logits, -1), labels) == pytest.approx(2.5, rel=0.05)
    pred = class_prediction(F.softmax(logits, -1)[None], labels)
    torch.testing.assert_close(tempered(pred, 1.0).probs, pred.probs, rtol=1e-5, atol=1e-6)
    hot = tempered(pred, 2.5)
    assert (hot.probs.max(-1).values <= pred.probs.max(-1).values + 1e-6).all()  # T > 1 softens
    assert F.nll_loss(hot.probs.log(), labels) < F.nll_loss(pred.probs.log(), labels)


def test_ensemble_of_identical_members_is_that_member_with_zero_disagreement(make_bert, make_tokens):
    data = batches(make_tokens)
    a = point_posterior(SequenceClassifier(make_bert(), LORA, num_labels=3))
    single = predict(a, data, num_samples=0)
    same = ensemble_predict([a, a], data)
    torch.testing.assert_close(same.probs, single.probs)
    assert same.mutual_information.abs().max() < 1e-6
    weights = a.mean()
    weights["head.weight"] = torch.randn(3, 32)
    b = point_posterior(SequenceClassifier(make_bert(), LORA, num_labels=3), weights)
    mixed = ensemble_predict([a, b], data)
    torch.testing.assert_close(mixed.probs, (single.probs + predict(b, data, num_samples=0).probs) / 2)
    assert (mixed.mutual_information > 0).all()


def test_mc_dropout_varies_between_passes_and_restores_eval_mode(make_bert, make_tokens):
    model = SequenceClassifier(make_bert(), LORA, num_labels=3)
    weights = model.initial_values()
    weights["head.weight"] = torch.randn(3, 32)
    posterior, data = point_posterior(model, weights), batches(make_tokens)
    pred = mc_dropout_predict(posterior, data, num_samples=6, seed=0)
    assert (pred.mutual_information > 0).all() and pred.num_samples == 6
    assert not model.backbone.training
    again = mc_dropout_predict(posterior, data, num_samples=6, seed=0)
    torch.testing.assert_close(pred.probs, again.probs)  # seeded
    with dropout_active(model):
        assert model.backbone.training
    assert not model.backbone.training


@pytest.mark.parametrize("kind", ["classifier", "multiple_choice"])
def test_peft_lora_equals_our_lora_with_the_same_weights(kind, make_bert, make_tokens):
    pytest.importorskip("peft")
    # non-zero A *and* B: the low-rank update, its alpha/r scaling and its place in the layer must agree
    ours, choices, weights = random_model(kind, make_bert, seed=3)
    theirs = PeftLoraModel(make_bert(), LORA.lora, None if choices else 3, "mean")
    params = dict(theirs.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            target = f"head.{name.split('.')[-1]}" if name.startswith("head.") else \
                f"body.base_model.model.{name}.default.weight"
            params[target].copy_(value)
    data = batches(make_tokens, choices=choices)
    untouched = predict(point_posterior(ours, {n: v * (0 if "lora_B" in n else 1) for n, v in weights.items()}),
                        data, num_samples=0).probs
    ours_probs = predict(point_posterior(ours, weights), data, num_samples=0).probs
    assert (ours_probs - untouched).abs().max() > 1e-3  # B != 0 really changes the output
    torch.testing.assert_close(peft_predict(theirs, data).probs, ours_probs, rtol=1e-4, atol=1e-5)
    fit = train_peft_lora(theirs, data, epochs=8, lr=1e-2, progress=False)
    assert fit.steps == 24 and sum(fit.history[-3:]) < sum(fit.history[:3])
    n_lora = sum(p.numel() for n, p in theirs.named_parameters() if "lora_" in n)
    assert n_lora == sum(v.numel() for n, v in weights.items() if "lora_" in n)


class _Linear(torch.nn.Module):
    """The smallest model :func:`train_peft_lora` trains: a linear map with ``trainable()``."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)

    def forward(self, inputs):
        return self.head(inputs["x"])

    def trainable(self):
        return list(self.parameters())


@pytest.mark.parametrize("given", [False, True])
def test_peft_lora_training_follows_the_protocols_warmup_and_linear_decay(given):
    # each step runs at lr * lr_factor(step): the schedule fit() uses, for Adam and for a given optimizer (IVON's)
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from pyro_bhpeft.infer import lr_factor

    torch.manual_seed(0)
    model = _Linear()
    data = [({"x": torch.randn(4, 3)}, torch.randint(0, 2, (4,))) for _ in range(5)]
    optimizer = torch.optim.SGD(model.trainable(), lr=0.3) if given else None
    seen: list[float] = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, *_: seen.append(opt.param_groups[0]["lr"]))
    try:
        fit = train_peft_lora(model, data, epochs=2, lr=0.1, max_steps=8, progress=False, optimizer=optimizer,
                              warmup_ratio=0.25, lr_decay="linear")
    finally:
        hook.remove()
    peak = 0.3 if given else 0.1
    assert fit.steps == 8
    assert seen == pytest.approx([peak * lr_factor(s, 8, warmup_ratio=0.25, decay="linear") for s in range(8)])
    assert seen[0] < seen[1] and seen[1] == pytest.approx(peak) and peak > seen[-1] > 0  # warm up, then decay


@pytest.mark.parametrize("kind", ["classifier", "multiple_choice"])
def test_ggn_matches_a_brute_force_jacobian(kind, make_bert, make_tokens):
    # GGN diagonal = sum_n diag(J_n^T (diag p_n - p_n p_n^T) J_n), with J_n from torch's jacobian
    model, choices, weights = random_model(kind, make_bert, seed=5)
    data = batches(make_tokens, n=2, size=3, choices=choices)
    ggn, seen = ggn_diagonal(model, weights, data, max_examples=5)
    assert seen == 5
    names = list(weights)
    expected = {n: torch.zeros_like(v) for n, v in weights.items()}
    examples = [({k: v[i:i + 1] for k, v in inputs.items()}) for inputs, _ in data for i in range(3)][:5]
    for inputs in examples:
        def logits(*flat):
            return model.run(dict(zip(names, flat)), inputs)[0]

        jac = torch.autograd.functional.jacobian(logits, tuple(weights[n] for n in names))
        p = logits(*(weights[n] for n in names)).detach().softmax(-1)
        h = torch.diag(p) - torch.outer(p, p)
        for name, j in zip(names, jac):
            j = j.reshape(len(p), -1)
            expected[name] += torch.einsum("ci,cd,di->i", j, h, j).reshape(weights[name].shape)
    for name in names:
        torch.testing.assert_close(ggn[name], expected[name].clamp_min(0), rtol=1e-4, atol=1e-6)


def test_laplace_evidence_maximiser_matches_its_closed_form():
    # with every GGN entry equal to g, d/d(lam) of the evidence is P/lam - P/(g + lam) - |w|^2 = 0,
    # i.e. lam^2 + g lam - P g / |w|^2 = 0
    from pyro_bhpeft.baselines.laplace import _log_marginal_likelihood

    count, g, sq_norm = 50, 4.0, 20.0
    ggn = torch.full((count,), g)
    best = (-g + math.sqrt(g * g + 4 * count * g / sq_norm)) / 2
    grid = torch.linspace(0.5 * best, 2 * best, 2001).tolist()
    values = [_log_marginal_likelihood(lam, ggn, sq_norm) for lam in grid]
    assert grid[max(range(len(grid)), key=values.__getitem__)] == pytest.approx(best, rel=2e-3)


@pytest.mark.parametrize("kind", ["classifier", "multiple_choice"])
def test_linearised_predictive_is_exact_for_a_model_linear_in_its_random_weights(kind, make_bert, make_tokens):
    # Only the head is uncertain (the LoRA scales are ~0), so the logits are linear in the random weights
    # and Gaussian with a known covariance: classifier Var(f_c) = sum_d x_d^2 s_cd^2 + s_c^2 (independent
    # classes); multiple choice Cov(f_j, f_k) = sum_d x_jd x_kd s_d^2 + s_b^2 (one head shared by choices).
    model, choices, locs = random_model(kind, make_bert, seed=2)
    g = torch.Generator().manual_seed(12)
    scales = {n: (torch.rand(v.shape, generator=g) + 0.5 if n.startswith("head.") else torch.full_like(v, 1e-8))
              for n, v in locs.items()}
    posterior = Posterior(model, MeanField.from_marginals(model, locs, scales))
    data = batches(make_tokens, n=2, size=4, choices=choices)
    glm = linearised_predict(posterior, data, num_samples=50_000, seed=0)

    expected = []
    for inputs, _ in data:
        with torch.no_grad(), model.bound(locs):
            flat = model.flatten_inputs(inputs)
            hidden = model.backbone(input_ids=flat["input_ids"], attention_mask=flat["attention_mask"]).last_hidden_state
            x = pool(hidden, flat["attention_mask"], model.pooling)
        w_var, b_var = scales["head.weight"].square(), scales["head.bias"].square()
        if choices is None:  # x (B, D): one diagonal covariance per example
            cov = torch.diag_embed(x.square() @ w_var.T + b_var)
        else:  # x (B * C, D) -> (B, C, D)
            x = x.view(len(inputs["input_ids"]), choices, -1)
            cov = torch.einsum("bjd,bkd->bjk", x * w_var[0], x) + b_var
        mean = model.run(locs, inputs).detach()
        draws = torch.distributions.MultivariateNormal(mean, cov + 1e-9 * torch.eye(3)).sample((200_000,))
        expected.append(draws.softmax(-1).mean(0))
    torch.testing.assert_close(glm.probs, torch.cat(expected), atol=0.012, rtol=0)
    assert glm.mutual_information.min() > 0.01

    # no uncertainty at all: the predictive is the mean network's, with zero disagreement
    still = Posterior(model, MeanField.from_marginals(model, locs, {n: torch.full_like(v, 1e-8) for n, v in locs.items()}))
    point = linearised_predict(still, data, num_samples=5)
    torch.testing.assert_close(point.probs, predict(still, data, num_samples=0).probs, atol=1e-5, rtol=0)
    assert point.mutual_information.max() < 1e-6
    torch.testing.assert_close(point.labels, torch.cat([y for _, y in data]))


def test_linearised_predictive_refuses_a_non_diagonal_posterior(make_bert, make_tokens):
    model = SequenceClassifier(make_bert(), LORA, num_labels=3)
    with pytest.raises(ValueError, match="diagonal Gaussian"):
        linearised_predict(point_posterior(model), batches(make_tokens), num_samples=2)


# (batch 4, choices 3): every example keeps at least one choice; row 3 keeps all of them
CHOICE_MASK = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=torch.bool)


def test_multiple_choice_helpers_round_trip_and_hide_masked_choices(make_tokens):
    inputs = make_tokens(4, seq=6, choices=3, seed=1)
    flat = flatten_choices({**inputs, "choice_mask": CHOICE_MASK})
    assert set(flat) == set(inputs)  # the mask is not a backbone input
    for key, value in inputs.items():  # row b * 3 + c is choice c of example b: unflattening restores it
        assert flat[key].shape == (12, 6)
        assert torch.equal(flat[key].view(4, 3, 6), value)
    scores = torch.arange(12.0).unsqueeze(1)  # (batch * choices, 1), one score per flat row
    assert torch.equal(choice_scores(scores, inputs), torch.arange(12.0).view(4, 3))
    # masked choices get the highest raw scores, and still never win
    scores = torch.where(CHOICE_MASK.flatten(), torch.randn(12), torch.tensor(1e6)).unsqueeze(1)
    masked = choice_scores(scores, {**inputs, "choice_mask": CHOICE_MASK})
    assert (masked[~CHOICE_MASK] == float("-inf")).all()
    assert torch.equal(masked[CHOICE_MASK], scores.view(4, 3)[CHOICE_MASK])
    assert CHOICE_MASK.gather(1, masked.argmax(-1, keepdim=True)).all()
    assert (masked.softmax(-1)[~CHOICE_MASK] == 0).all()
    with pytest.raises(ValueError, match="batch, choices, seq"):
        flatten_choices(make_tokens(4, seq=6))


def test_multiple_choice_scores_each_choice_in_its_place_and_masks_it(make_bert, make_tokens):
    model, choices, weights = random_model("multiple_choice", make_bert, seed=4)
    inputs = make_tokens(4, seq=6, choices=choices, seed=1)
    with torch.no_grad():
        logits = model.run(weights, inputs)
        # each (example, choice) scored on its own lands where the batched forward put it
        alone = torch.tensor([[model.run(weights, {k: v[b:b + 1, c:c + 1] for k, v in inputs.items()}).item()
                               for c in range(choices)] for b in range(4)])
        masked = model.run(weights, {**inputs, "choice_mask": CHOICE_MASK})
    torch.testing.assert_close(alone, logits, rtol=1e-5, atol=1e-6)
    assert (masked[~CHOICE_MASK] == float("-inf")).all() and torch.equal(masked[CHOICE_MASK], logits[CHOICE_MASK])
    assert CHOICE_MASK.gather(1, masked.argmax(-1, keepdim=True)).all()


def test_peft_lora_masks_choices_like_our_model(make_bert, make_tokens):
    pytest.importorskip("peft")
    theirs = PeftLoraModel(make_bert(), LORA.lora, None, "mean")
    inputs = {**make_tokens(4, seq=6, choices=3, seed=1), "choice_mask": CHOICE_MASK}
    with torch.no_grad():
        masked, plain = theirs(inputs), theirs({k: v for k, v in inputs.items() if k != "choice_mask"})
    assert masked.shape == (4, 3) and (masked[~CHOICE_MASK] == float("-inf")).all()
    assert torch.equal(masked[CHOICE_MASK], plain[CHOICE_MASK])
    probs = peft_predict(theirs, [(inputs, torch.zeros(4, dtype=torch.long))]).probs
    assert (probs[~CHOICE_MASK] == 0).all() and CHOICE_MASK.gather(1, probs.argmax(-1, keepdim=True)).all()
