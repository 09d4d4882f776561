"""Next-token training of a response given a prompt, token-level evaluation and generated answers with their
uncertainty, on a tiny Llama built from a config."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import save_tiny_causal_lm
from pyro_bhpeft import ConfigError, PeftConfig, Posterior, fit, priors
from pyro_bhpeft.config import AdapterConfig, PrefixConfig
from pyro_bhpeft.backbone import load_backbone
from pyro_bhpeft.continual import posterior_prior
from pyro_bhpeft.guides import Delta, MeanField
from pyro_bhpeft.language import (_greedy, _greedy_batch, answer_match, fit_token_temperature, generate, lm_batches, normalise_answer,
                                  selective_answering, token_metrics)
from pyro_bhpeft.models import LanguageModel

PROMPTS = ["Question: Which is a metal? Answer:", "Question: Which is a wood? Answer:",
           "Question: Which is a stone? Answer:", "Question: Which is a metal or a stone? Answer:"]
RESPONSES = [" iron", " oak", " granite", " copper"]


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


def _model(lm_dir, prior=None, peft=None):
    lm = load_backbone(lm_dir)
    return LanguageModel(lm.model, peft or PeftConfig(), prior or priors.Normal(1.0)), lm.tokenizer


def _ends(tokenizer) -> list[int]:
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def _manual_response_logprob(lm_dir, tokenizer, prompt: str, response: str | list[int]) -> float:
    """log p(response tokens | prompt) by the plain Hugging Face model: a text gets the end token, ids as given."""
    hf = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    context = tokenizer.encode(prompt, add_special_tokens=False)
    answer = response if isinstance(response, list) else \
        tokenizer.encode(response, add_special_tokens=False) + _ends(tokenizer)
    with torch.no_grad():
        logp = hf(input_ids=torch.tensor([context + answer])).logits[0].log_softmax(-1)
    return sum(float(logp[len(context) + i - 1, t]) for i, t in enumerate(answer))


def test_the_likelihood_is_the_responses_alone(lm_dir):
    model, tok = _model(lm_dir)
    posterior = Posterior(model, Delta(model))  # B = 0 at the start: the adapted model is the base model
    inputs, _ = next(iter(lm_batches(tok, PROMPTS, RESPONSES, max_length=24, batch_size=4)))
    logp, mask = model.run(posterior.mean(), inputs)
    per_sequence = (logp * mask).sum(-1)
    for i, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        assert per_sequence[i].item() == pytest.approx(_manual_response_logprob(lm_dir, tok, prompt, response),
                                                       abs=1e-4)
    assert int(mask.sum()) == sum(len(tok.encode(r, add_special_tokens=False)) + len(_ends(tok)) for r in RESPONSES)
    import pyro.poutine as poutine

    trace = poutine.trace(poutine.condition(model, data=posterior.mean())).get_trace(inputs, None)
    trace.compute_log_prob()
    assert trace.nodes["obs"]["log_prob_sum"].item() == pytest.approx(per_sequence.sum().item(), abs=1e-3)


def test_fit_lowers_the_response_nll_and_a_second_round_starts_from_the_first(lm_dir, tmp_path):
    model, tok = _model(lm_dir)
    batches = lm_batches(tok, PROMPTS, RESPONSES, max_length=24, batch_size=2, shuffle=True)
    guide = MeanField(model, init_scale=0.01)
    before = token_metrics(Posterior(model, guide), lm_batches(tok, PROMPTS, RESPONSES, max_length=24), num_samples=0)
    result = fit(model, guide, batches, num_data=400, epochs=15, lr=0.02, progress=False)  # KL small beside 400 rows
    after = token_metrics(result.posterior, lm_batches(tok, PROMPTS, RESPONSES, max_length=24), num_samples=4)
    assert after["nll"] < before["nll"] - 0.5 and after["perplexity"] == pytest.approx(math.exp(after["nll"]))
    result.posterior.save(tmp_path / "round1")
    back = Posterior.load(tmp_path / "round1")
    for name, value in result.posterior.mean().items():
        torch.testing.assert_close(back.mean()[name], value)
    prior = posterior_prior(back)
    second, _ = _model(lm_dir, prior)
    guide2 = MeanField(second, init_scale=0.01)
    fit(second, guide2, lm_batches(tok, PROMPTS[:2], RESPONSES[:2], max_length=24), epochs=1, progress=False)
    assert set(prior.locs) == set(result.posterior.mean())


def test_generated_answers_loglik_is_the_sum_of_token_logprobs_and_point_masses_have_no_epistemic_part(lm_dir):
    model, tok = _model(lm_dir)
    point = Posterior(model, Delta(model))
    rows = generate(point, tok, PROMPTS[:2], max_new_tokens=4, num_samples=3)
    for row in rows:
        manual = _manual_response_logprob(lm_dir, tok, row["prompt"], row["answer_ids"])
        assert row["tokens"] == 4 and row["loglik_draws"][0] == pytest.approx(manual, abs=1e-3)
        assert row["mutual_information"] == pytest.approx(0.0, abs=1e-6)
        assert row["predictive_nll"] == pytest.approx(row["expected_nll"], abs=1e-5)
    random = Posterior(model, MeanField(model, init_scale=0.3))
    noisy = generate(random, tok, PROMPTS[:2], max_new_tokens=4, num_samples=6)
    assert all(r["mutual_information"] > 0 and r["predictive_nll"] < r["expected_nll"] for r in noisy)


HYBRID = PeftConfig(adapter=AdapterConfig(bottleneck=4), prefix=PrefixConfig(length=3))


def _moved_posterior(lm_dir, peft):
    """A mean-field posterior fitted a few steps, so its mean is not the base model and its draws differ."""
    model, tok = _model(lm_dir, peft=peft)
    guide = MeanField(model, init_scale=0.2)
    fit(model, guide, lm_batches(tok, PROMPTS, RESPONSES, max_length=24, batch_size=2), epochs=3, lr=0.05,
        progress=False)
    return Posterior(model, guide), tok


@pytest.mark.parametrize("peft", [PeftConfig(), HYBRID], ids=["lora", "lora+adapter+prefix"])
def test_cached_greedy_decoding_gives_the_uncached_answers_and_uncertainty(lm_dir, peft):
    posterior, tok = _moved_posterior(lm_dir, peft)
    model, lengths = posterior.model, []
    hook = model.backbone.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]),
                                                    with_kwargs=True)
    try:
        context = tok.encode(PROMPTS[0], add_special_tokens=False)
        tokens, loglik = _greedy(model, posterior.mean(), context, 6, None, use_cache=True)
        assert lengths == [len(context)] + [1] * 5  # the prompt once, then one new token per step
        lengths.clear()
        assert _greedy(model, posterior.mean(), context, 6, None, use_cache=False)[0] == tokens
        assert lengths == [len(context) + i for i in range(6)]
    finally:
        hook.remove()
    at_mean = generate(posterior, tok, PROMPTS[:1], max_new_tokens=6, num_samples=0)[0]  # K = 0: scored at the mean
    assert loglik == pytest.approx(at_mean["loglik_mean"], abs=1e-6)
    assert at_mean["loglik_draws"] == pytest.approx([loglik], abs=1e-5)  # step by step = one forward over it all
    cached = generate(posterior, tok, PROMPTS, max_new_tokens=6, num_samples=4, use_cache=True)
    plain = generate(posterior, tok, PROMPTS, max_new_tokens=6, num_samples=4, use_cache=False)
    for a, b in zip(cached, plain):
        assert a["answer_ids"] == b["answer_ids"] and a["answer"] == b["answer"]
        for key in ("loglik_mean", "expected_nll", "predictive_nll", "predictive_entropy", "mutual_information"):
            assert a[key] == pytest.approx(b[key], abs=1e-5)
        assert a["loglik_draws"] == pytest.approx(b["loglik_draws"], abs=1e-5)
    assert all(r["tokens"] > 0 for r in cached) and any(r["mutual_information"] > 0 for r in cached)


@pytest.mark.parametrize("peft", [PeftConfig(), HYBRID], ids=["lora", "lora+adapter+prefix"])
def test_prompts_decoded_together_get_the_answers_they_get_alone(lm_dir, peft):
    posterior, tok = _moved_posterior(lm_dir, peft)
    model, mean = posterior.model, posterior.mean()
    prompts = [PROMPTS[3], "Iron:", PROMPTS[0], "Question: Which?"]  # 4 lengths: rows left padded by 0 to 10+
    contexts = [tok.encode(p, add_special_tokens=False) for p in prompts]
    assert len({len(c) for c in contexts}) == 4
    alone = [_greedy(model, mean, c, 6, None) for c in contexts]
    for use_cache in (True, False):
        got = _greedy_batch(model, mean, contexts, 6, None, use_cache=use_cache)
        assert [t for t, _ in got] == [t for t, _ in alone]
        assert [ll for _, ll in got] == pytest.approx([ll for _, ll in alone], abs=1e-4)
    for i, c in enumerate(contexts):  # a plain reference: the whole sequence, unpadded, without cache or mask
        tokens = []
        for _ in range(6):
            tokens.append(int(model.next_logits(mean, torch.tensor([c + tokens]))[0][0].argmax()))
        assert tokens == alone[i][0]
    with pytest.raises(ConfigError, match="batch_size"):
        generate(posterior, tok, prompts, batch_size=0)
    with pytest.raises(ConfigError, match="prompt 1 is empty"):
        generate(posterior, tok, ["Iron:", ""])
    rows = generate(posterior, tok, prompts, max_new_tokens=6, num_samples=3, batch_size=3)  # chunks of 3 and 1
    one_by_one = [generate(posterior, tok, [p], max_new_tokens=6, num_samples=3, batch_size=1)[0] for p in prompts]
    for a, b in zip(rows, one_by_one):
        assert a["answer_ids"] == b["answer_ids"] and a["loglik_draws"] == pytest.approx(b["loglik_draws"], abs=1e-4)


def test_a_row_that_ends_stops_while_the_others_of_its_batch_go_on(lm_dir):
    posterior, tok = _moved_posterior(lm_dir, PeftConfig())
    model, mean = posterior.model, posterior.mean()
    contexts = [tok.encode(p, add_special_tokens=False) for p in (PROMPTS[3], "Iron:", PROMPTS[0])]
    alone = [_greedy(model, mean, c, 6, None)[0] for c in contexts]
    # as the end token, one some rows emit and others not: those rows end early, the others go on
    stop = next(t for answer in alone for t in answer if any(t not in other for other in alone))
    want = [_greedy(model, mean, c, 6, stop) for c in contexts]
    assert len({len(t) for t, _ in want}) > 1 and any(len(t) == 6 for t, _ in want)
    for use_cache in (True, False):
        got = _greedy_batch(model, mean, contexts, 6, stop, use_cache=use_cache)
        assert [t for t, _ in got] == [t for t, _ in want]
        assert [ll for _, ll in got] == pytest.approx([ll for _, ll in want], abs=1e-4)


def test_the_answers_likelihood_under_k_draws_takes_one_forward_per_draw_folded_into_one(lm_dir):
    posterior, tok = _moved_posterior(lm_dir, HYBRID)
    model, calls = posterior.model, []
    hook = model.backbone.register_forward_pre_hook(lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)),
                                                    with_kwargs=True)
    try:
        row = generate(posterior, tok, PROMPTS[:1], max_new_tokens=4, num_samples=5)[0]
    finally:
        hook.remove()
    context = len(tok.encode(PROMPTS[0], add_special_tokens=False))
    assert row["tokens"] == 4 and calls == [(1, context), (1, 1), (1, 1), (1, 1), (5, context + 4)]
    draws = posterior.sample(5, seed=0)  # the same draws, one at a time: the folded forward agrees
    x = torch.tensor([tok.encode(PROMPTS[0], add_special_tokens=False) + row["answer_ids"]])
    span = slice(x.shape[1] - row["tokens"] - 1, x.shape[1] - 1)
    one = torch.cat([model.draw_logits([w], x, span) for w in draws])
    torch.testing.assert_close(model.draw_logits(draws, x, span), one, atol=1e-5, rtol=1e-5)
    logp = one.log_softmax(-1).gather(-1, torch.tensor(row["answer_ids"]).expand(5, -1).unsqueeze(-1)).sum((1, 2))
    assert row["loglik_draws"] == pytest.approx(logp.tolist(), abs=1e-4)


def test_flipout_decodes_without_the_cache(lm_dir):
    model, tok = _model(lm_dir)
    mean = Posterior(model, Delta(model)).mean()
    model.flipout_locs = lambda name: None  # flipout on: each forward its own signs, so no cache is exact
    lengths = []
    hook = model.backbone.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]),
                                                    with_kwargs=True)
    try:
        context = tok.encode(PROMPTS[0], add_special_tokens=False)
        _greedy(model, mean, context, 3, None, use_cache=True)
    finally:
        hook.remove()
    assert not model.cacheable and lengths == [len(context) + i for i in range(3)]


def test_selective_answering_and_normalised_match():
    result = selective_answering([True, True, False, False], [0.1, 0.2, 0.8, 0.9])
    assert result["auroc_wrong"] == 1.0 and result["accuracy"][:2] == [1.0, 1.0]
    assert result["area"] == pytest.approx((1 + 1 + 2 / 3 + 0.5) / 4)
    assert normalise_answer("The Iron!") == normalise_answer("iron")
    assert answer_match(" iron", "iron ") == {"exact_match": True, "normalised_match": True}
    assert answer_match(" The iron.", "iron") == {"exact_match": False, "normalised_match": True}


def test_the_front_door_fits_a_language_model_from_prompt_and_response_columns(lm_dir, tmp_path):
    from pyro_bhpeft import BayesianPEFT

    data = {"prompt": PROMPTS, "response": RESPONSES}
    model = BayesianPEFT(lm_dir, task="language-model", r=2, max_length=24, batch_size=2, init_scale=0.01)
    model.fit(data, epochs=1, progress=False)
    before = model.evaluate(data, samples=0, split="train")["nll"]
    model.fit(data, epochs=10, lr=0.02, progress=False)
    after = model.evaluate(data, samples=4, split="train")
    assert model.spec.kind == "language_model" and after["nll"] < before and after["tokens"] == 4  # no end token here
    rows = model.generate(PROMPTS[:1], samples=3, max_new_tokens=3)
    assert rows[0]["tokens"] <= 3 and rows[0]["mutual_information"] >= 0
    model.save(tmp_path / "run")
    back = BayesianPEFT.load(tmp_path / "run")
    assert back.generate(PROMPTS[:1], samples=3, max_new_tokens=3)[0]["answer"] == rows[0]["answer"]
    from pyro_bhpeft.runs import evaluate_run  # what `pyro-bhpeft evaluate RUN --data FILE` reports

    pd.DataFrame(data).to_csv(tmp_path / "pairs.csv", index=False)
    saved = evaluate_run(tmp_path / "run", data_file=tmp_path / "pairs.csv", samples=4)
    assert saved["samples"]["nll"] == pytest.approx(after["nll"], rel=1e-4)
    assert saved["samples"]["tokens"] == after["tokens"] and saved["mean_only"]["num_samples"] == 0
    second = model.next_round()
    second.fit({"prompt": PROMPTS[:2], "response": RESPONSES[:2]}, epochs=1, progress=False)
    assert second.round == 2


def _manual_token_nll(model, weights, batches, temperature: float) -> float:
    """The mean NLL of the response tokens under softmax(logits / T), from the model's own forward."""
    total, count = 0.0, 0
    for inputs, _ in batches:
        with model.bound(weights):
            hidden = model.backbone(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        logp = (model.backbone.lm_head(hidden[:, :-1]).double() / temperature).log_softmax(-1)
        logp = logp.gather(-1, inputs["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
        keep = inputs["target_mask"][:, 1:].bool()
        total, count = total - float(logp[keep].sum()), count + int(keep.sum())
    return total / count


def test_a_temperature_divides_the_logits_and_one_is_todays_numbers(lm_dir):
    posterior, tok = _moved_posterior(lm_dir, PeftConfig())
    batches = lm_batches(tok, PROMPTS, RESPONSES, max_length=24, batch_size=2)
    mean = posterior.mean()
    assert token_metrics(posterior, batches, num_samples=4, temperature=1.0) == token_metrics(posterior, batches,
                                                                                               num_samples=4)
    for t in (1.0, 2.5):
        at_mean = token_metrics(posterior, batches, num_samples=0, temperature=t)
        assert at_mean["nll"] == pytest.approx(_manual_token_nll(posterior.model, mean, batches, t), abs=1e-5)
    plain = generate(posterior, tok, PROMPTS[:2], max_new_tokens=4, num_samples=3)
    assert generate(posterior, tok, PROMPTS[:2], max_new_tokens=4, num_samples=3, temperature=1.0) == plain
    hot = generate(posterior, tok, PROMPTS[:2], max_new_tokens=4, num_samples=0, temperature=2.5)
    for row, base in zip(hot, plain):
        assert row["answer_ids"] == base["answer_ids"]  # the same greedy answer, scored tempered
        x = torch.tensor([tok.encode(row["prompt"], add_special_tokens=False) + row["answer_ids"]])
        span = slice(x.shape[1] - row["tokens"] - 1, x.shape[1] - 1)
        logp = (posterior.model.draw_logits([mean], x, span)[0] / 2.5).log_softmax(-1)
        manual = float(logp.gather(-1, torch.tensor(row["answer_ids"]).unsqueeze(-1)).sum())
        assert row["loglik_mean"] == pytest.approx(manual, abs=1e-4) and row["loglik_draws"] == pytest.approx([manual],
                                                                                                            abs=1e-4)


def test_the_fitted_temperature_minimises_the_held_out_nll_and_scales_with_the_logits(lm_dir):
    posterior, tok = _moved_posterior(lm_dir, PeftConfig())
    batches = lm_batches(tok, PROMPTS, RESPONSES, max_length=24, batch_size=2)
    t = fit_token_temperature(posterior, batches)

    def nll(temperature):
        return token_metrics(posterior, batches, num_samples=0, temperature=temperature)["nll"]

    assert nll(t) < nll(t * 1.05) and nll(t) < nll(t / 1.05)
    factor = 3.0 / t  # logits made `factor` times sharper: the fitted temperature is `factor` times larger (= 3)
    with torch.no_grad():
        posterior.model.backbone.lm_head.weight.mul_(factor)
    sharp = fit_token_temperature(posterior, batches)
    assert sharp > 1 and sharp == pytest.approx(factor * t, rel=1e-3)
    assert fit_token_temperature(posterior, batches, num_samples=3) > 0


def test_response_batches_are_as_long_as_their_longest_row_and_score_as_the_padded_ones(lm_dir):
    from pyro_bhpeft.data.responses import response_rows

    posterior, tok = _moved_posterior(lm_dir, PeftConfig())
    trimmed = lm_batches(tok, PROMPTS, RESPONSES, max_length=40, batch_size=2)
    padded = response_rows(tok, PROMPTS, RESPONSES, 40)
    full = [({k: torch.tensor(v[i:i + 2]) for k, v in padded.items()}, None) for i in (0, 2)]
    for (inputs, _), (whole, _) in zip(trimmed, full):
        assert inputs["input_ids"].shape[1] == int(whole["attention_mask"].sum(1).max()) < 40
    short, long = token_metrics(posterior, trimmed, num_samples=3), token_metrics(posterior, full, num_samples=3)
    assert short["tokens"] == long["tokens"]
    for key in ("nll", "token_accuracy", "token_ece"):
        assert short[key] == pytest.approx(long[key], abs=1e-5)
