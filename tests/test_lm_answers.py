"""The issue-34 runner (benchmarks/lm_answers.py) end to end on a tiny Llama from a config, with tiny sizes: cells
and summary written, resumable, the summary's numbers the cells' means, temperature on lora's fit, lora's mutual
information zero, and smoke options refused into the committed folder."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from helpers import save_tiny_causal_lm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lm_answers  # noqa: E402

COMMITTED = ROOT / "docs" / "lm" / "arc-easy-smollm2"
METHODS = ("lora", "temperature", "blob", "mean-field-lora")


def _cells(out: Path, method: str, seed: int) -> tuple[dict, list[dict]]:
    folder = out / "cells" / f"{method}-seed{seed}"
    rows = [json.loads(line) for line in (folder / "answers.jsonl").read_text().splitlines()]
    return json.loads((folder / "metrics.json").read_text()), rows


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The committed protocol run on a tiny Llama, 6 training and 4 test questions, 2 steps, seeds 0 and 1."""
    lm_dir = save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))
    out = tmp_path_factory.mktemp("lm-answers") / "smoke"
    fits = []
    from pyro_bhpeft import BayesianPEFT

    real_fit = BayesianPEFT.fit

    def counting_fit(self, *args, **kwargs):
        fits.append(self.recipe.guide)
        return real_fit(self, *args, **kwargs)

    BayesianPEFT.fit = counting_fit
    try:
        lm_answers.main([str(COMMITTED), "--backbone", lm_dir, "--train-size", "6", "--eval-size", "4",
                         "--max-steps", "2", "--samples", "3", "--max-new-tokens", "3", "--seeds", "0", "1", "2",
                         "--device", "cpu", "--out", str(out)])
    finally:
        BayesianPEFT.fit = real_fit
    return out, lm_dir, fits


def test_every_cell_and_the_summary_are_written_and_temperature_reuses_the_lora_fit(smoke):
    out, _, fits = smoke
    for method in METHODS:
        for seed in (0, 1, 2):
            metrics, rows = _cells(out, method, seed)
            assert len(rows) == 4 and metrics["response_tokens"] > 0
            assert {"prompt", "gold", "answer", "exact_match", "normalised_match", *lm_answers.SCORES} <= set(rows[0])
            assert metrics["provenance"]["device"] == "cpu"
    assert (out / "comparison.md").exists() and (out / "figures" / "accuracy-coverage.png").stat().st_size > 0
    assert len(fits) == 9  # lora, blob, mean-field-lora at three seeds: temperature fits nothing of its own
    assert sorted(p.name for p in (out / "fits").iterdir() if p.is_dir()) == [
        f"{m}-seed{s}" for m in ("blob", "lora", "mean-field-lora") for s in (0, 1, 2)]
    for seed in (0, 1, 2):
        lora, lora_rows = _cells(out, "lora", seed)
        temp, temp_rows = _cells(out, "temperature", seed)
        assert temp["fit"] == lora["fit"] == f"fits/lora-seed{seed}" and temp["temperature"] != 1.0
        assert [r["answer"] for r in temp_rows] == [r["answer"] for r in lora_rows]  # the same weights' answers
        assert temp["train_seconds"] > lora["train_seconds"]  # lora's fit plus the temperature fit
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["overrides"]["train_size"] == 6 and protocol["test_size"] == 4


def test_lora_has_no_mutual_information_and_the_bayesian_methods_have_draws(smoke):
    out, _, _ = smoke
    for seed in (0, 1, 2):
        metrics, rows = _cells(out, "lora", seed)
        assert metrics["samples"] == 0 and all(r["mutual_information"] == 0.0 for r in rows)
        assert all(r["predictive_nll"] == pytest.approx(r["neg_loglik_mean"], abs=1e-4) for r in rows)
        bayes, bayes_rows = _cells(out, "mean-field-lora", seed)
        assert bayes["samples"] == 3 and all(len(r["loglik_draws"]) == 3 for r in bayes_rows)
        assert any(r["mutual_information"] > 0 for r in bayes_rows)


def test_the_summary_holds_the_cells_means_and_the_paired_differences(smoke):
    out, _, _ = smoke
    summary = json.loads((out / "comparison.json").read_text())
    text = (out / "comparison.md").read_text()
    for method in METHODS:
        cells = [_cells(out, method, s)[0] for s in (0, 1, 2)]
        for key in ("token_nll", "perplexity", "token_ece", "exact_match", "predict_seconds"):
            values = [c[key] for c in cells]
            assert summary["cells"][method][key]["mean"] == pytest.approx(statistics.fmean(values))
            assert summary["cells"][method][key]["sd"] == pytest.approx(statistics.stdev(values))
        nll = [c["token_nll"] for c in cells]
        assert f"{statistics.fmean(nll):.3f} ± {statistics.stdev(nll):.3f}" in text
    row = next(r for r in summary["paired"] if r["method"] == "mean-field-lora" and r["key"] == "token_nll")
    lora = [_cells(out, "lora", s)[0]["token_nll"] for s in (0, 1, 2)]
    mine = [_cells(out, "mean-field-lora", s)[0]["token_nll"] for s in (0, 1, 2)]
    assert row["differences"] == pytest.approx([a - b for a, b in zip(mine, lora)])
    assert row["better"] == sum(a < b for a, b in zip(mine, lora))
    assert not any(r["method"] == "temperature" and r["key"] == "auroc_mutual_information" for r in summary["paired"])
    assert summary["targets"]["verdict"] == "missed"  # every answer of the tiny model is wrong: no AUROC
    assert set(summary["attribution"]) == {"lora", "blob", "mean-field-lora"}  # temperature: no draws, lora's fit


def test_a_second_call_runs_nothing(smoke, capsys, monkeypatch):
    out, lm_dir, _ = smoke
    before = {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/*")}
    monkeypatch.setattr(lm_answers, "run_cell", None)  # any cell run would fail
    lm_answers.main([str(COMMITTED), "--backbone", lm_dir, "--train-size", "6", "--eval-size", "4",
                     "--max-steps", "2", "--samples", "3", "--max-new-tokens", "3", "--seeds", "0", "1", "2",
                     "--out", str(out)])
    assert "0 of 12 cells to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (out / "cells").glob("*/*")} == before


def test_smoke_options_are_refused_into_the_committed_folder_and_other_settings_into_a_used_one(smoke, capsys,
                                                                                               monkeypatch):
    out, lm_dir, _ = smoke
    monkeypatch.setattr(lm_answers, "questions", None)  # were a refusal to fail, nothing real would run
    kept = sorted(p.relative_to(COMMITTED) for p in COMMITTED.rglob("*"))  # the committed cells, if any yet
    with pytest.raises(SystemExit) as stop:
        lm_answers.main([str(COMMITTED), "--train-size", "5"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train-size" in err[0] and "--out" in err[0]
    with pytest.raises(SystemExit):
        lm_answers.main([str(COMMITTED), "--backbone", lm_dir, "--train-size", "7", "--out", str(out)])
    assert "other settings" in capsys.readouterr().err
    assert sorted(p.relative_to(COMMITTED) for p in COMMITTED.rglob("*")) == kept  # nothing written there


def test_answer_metrics_score_each_uncertainty_for_flagging_wrong_answers():
    rows = [{"exact_match": em, "normalised_match": nm, "tokens": 2, "neg_loglik_mean": nll, "predictive_nll": nll,
             "predictive_entropy": 1.0, "mutual_information": mi}
            for em, nm, nll, mi in [(True, True, 0.9, 0.1), (False, True, 0.1, 0.2), (False, False, 0.5, 0.8),
                                    (False, False, 0.2, 0.9)]]
    out = lm_answers.answer_metrics(rows)
    assert out["exact_match"] == 0.25 and out["normalised_match"] == 0.5
    assert out["auroc_mutual_information"] == 1.0 and out["auroc_neg_loglik_mean"] == 0.5
    assert out["auroc_predictive_entropy"] == 0.5  # a constant score: chance
    assert out["selective"]["mutual_information"]["accuracy"] == pytest.approx([1.0, 1.0, 2 / 3, 0.5])


def _three_seeds(nll: list[float], mi_auroc: list[float], exact: list[float]) -> dict:
    lora = {s: {"token_nll": 1.0, "exact_match": 0.5, "auroc_neg_loglik_mean": 0.6, "auroc_mutual_information": 0.5,
                "samples": 0} for s in range(3)}
    mine = {s: {"token_nll": nll[s], "exact_match": exact[s], "auroc_neg_loglik_mean": 0.6,
                "auroc_mutual_information": mi_auroc[s], "samples": 8} for s in range(3)}
    return {"lora": lora, "mean-field-lora": mine}


def test_the_targets_are_judged_seed_by_seed_as_the_protocol_says():
    protocol = json.loads((COMMITTED / "protocol.json").read_text())

    def verdict(*args):
        return lm_answers.targets(lm_answers.paired(_three_seeds(*args)), protocol)

    assert verdict([0.9, 0.95, 0.99], [0.7, 0.65, 0.61], [0.5, 0.49, 0.495])["verdict"] == "met"
    nll_once = verdict([0.9, 1.01, 0.99], [0.7, 0.65, 0.61], [0.5, 0.49, 0.495])
    assert nll_once["verdict"] == "missed" and not nll_once["token_nll_lower_every_seed"]
    auroc_once = verdict([0.9, 0.95, 0.99], [0.9, 0.9, 0.59], [0.5, 0.5, 0.5])  # higher on the mean, not every seed
    assert auroc_once["verdict"] == "missed" and not auroc_once["mi_auroc_higher_mean_and_every_seed"]
    less_accurate = verdict([0.9, 0.95, 0.99], [0.7, 0.65, 0.61], [0.49, 0.48, 0.49])  # 1.33 points below
    assert less_accurate["verdict"] == "missed" and not less_accurate["exact_match_within_1_point"]


def test_the_attribution_separates_the_answers_length_from_the_mutual_information_per_token(tmp_path):
    """Wrong answers are the long ones and each token carries the same mutual information: the length flags them
    perfectly, the MI per token is constant (chance), the summed MI follows the length exactly; the draws' spread
    is wider on the wrong answers."""
    rows = [{"normalised_match": right, "tokens": n, "mutual_information": 0.25 * n, "neg_loglik_mean": nll,
             "loglik_draws": [-1.0, -1.0 - spread]} for right, n, spread, nll in
            [(True, 1, 0.1, 0.5), (True, 2, 0.0, 1.0), (False, 3, 0.5, 6.0), (False, 5, 0.3, 5.0)]]
    cells = {"lora": {0: {"samples": 0}}, "temperature": {0: {"samples": 0}}, "mean-field-lora": {0: {"samples": 8}}}
    for method in cells:
        folder = tmp_path / "cells" / f"{method}-seed0"
        folder.mkdir(parents=True)
        (folder / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, numbers = lm_answers.attribution(tmp_path, cells)
    assert set(numbers) == {"lora", "mean-field-lora"}  # temperature has neither draws nor an answer of its own
    mine = numbers["mean-field-lora"]
    assert mine["AUROC answer length"]["mean"] == 1.0
    assert mine["AUROC MI per token"]["mean"] == 0.5
    assert mine["AUROC sd of draws' loglik"]["mean"] == 1.0
    assert mine["corr(MI, length)"]["mean"] == pytest.approx(1.0)
    assert mine["AUROC -loglik per token"]["mean"] == 1.0  # per token 0.5, 0.5 right; 2.0, 1.0 wrong
    assert numbers["lora"]["AUROC answer length"]["mean"] == 1.0
    assert numbers["lora"]["corr(-loglik, length)"]["mean"] == pytest.approx(mine["corr(-loglik, length)"]["mean"])
    for column in ("AUROC MI per token", "AUROC sd of draws' loglik", "corr(MI, length)"):  # lora has no draws
        assert math.isnan(numbers["lora"][column]["mean"])


def test_the_summary_json_keeps_twelve_significant_digits_so_last_bit_sums_agree():
    """Two installs summing in another order differ in the last bits; the written summary does not."""
    a, b = 0.8571735189007196, 0.8571735189007184
    assert a != b
    written = lm_answers._rounded({"cells": {"m": {"auroc": {"mean": a, "seeds": (a, 1)}}}})
    assert written == lm_answers._rounded({"cells": {"m": {"auroc": {"mean": b, "seeds": (b, 1)}}}})
    assert written == {"cells": {"m": {"auroc": {"mean": 0.857173518901, "seeds": [0.857173518901, 1]}}}}
