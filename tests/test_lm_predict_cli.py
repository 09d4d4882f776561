"""``pyro-bhpeft predict`` on a language-model run: a generated answer per prompt with its likelihood and
uncertainty (the fields of :func:`pyro_bhpeft.language.generate`), scored against a gold column when the file has
one; a tiny Llama fitted through the command line."""

from __future__ import annotations

import inspect
import json

import pandas as pd
import pytest

from helpers import error_line, save_tiny_causal_lm
from pyro_bhpeft.cli import main
from pyro_bhpeft.language import normalise_answer

PROMPTS = ["Question: Which is a metal? Answer:", "Question: Which is a wood? Answer:",
           "Question: Which is a stone? Answer:", "Question: Which is a metal or a stone? Answer:"]
RESPONSES = [" iron", " oak", " granite", " copper"]


def run_cli(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-data")
    train = pd.DataFrame({"question": PROMPTS * 3, "answer": RESPONSES * 3})
    train.to_csv(folder / "train.csv", index=False)
    train[:4].to_csv(folder / "gold.csv", index=False)
    pd.DataFrame({"question": PROMPTS[:3]}).to_csv(folder / "prompts.csv", index=False)
    pd.DataFrame({"text": PROMPTS[:2]}).to_csv(folder / "no_prompt.csv", index=False)
    return folder


def _fit(lm_dir, files, out, *extra):
    assert run_cli("fit", "--train", files / "train.csv", "--prompt-column", "question", "--response-column",
                   "answer", "--backbone", lm_dir, "--lora-r", 2, "--max-steps", 2, "--batch-size", 4,
                   "--max-length", 24, "--out", out, *extra) == 0
    return out


@pytest.fixture(scope="module")
def runs(lm_dir, files, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm-runs")
    return {"mean-field": _fit(lm_dir, files, folder / "mf", "--init-scale", 0.3),
            "mle": _fit(lm_dir, files, folder / "mle", "--guide", "mle")}


def _library_rows(run, prompts, samples, max_new_tokens):
    """What the library's ``generate`` answers for the same run."""
    from pyro_bhpeft.backbone import load_backbone
    from pyro_bhpeft.language import generate
    from pyro_bhpeft.runs import load_run

    posterior, _ = load_run(run)
    tokenizer = load_backbone(posterior.backbone_name).tokenizer
    return generate(posterior, tokenizer, prompts, num_samples=samples, max_new_tokens=max_new_tokens)


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


SCALARS = ("tokens", "loglik_mean", "expected_nll", "predictive_nll", "predictive_entropy", "mutual_information")


def test_predict_writes_an_answer_per_prompt_with_generates_fields_and_scores_it_against_the_gold_column(
        runs, files, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    assert run_cli("predict", runs["mean-field"], "--data", files / "gold.csv", "--samples", 3,
                   "--max-new-tokens", 3, "--out", out) == 0
    written, library = _read_jsonl(out), _library_rows(runs["mean-field"], PROMPTS, 3, 3)
    assert len(written) == len(PROMPTS) and [r["prompt"] for r in written] == PROMPTS
    for row, lib, gold in zip(written, library, RESPONSES):
        assert row["answer"] == lib["answer"] and row["answer_ids"] == " ".join(map(str, lib["answer_ids"]))
        assert [row[k] for k in SCALARS] == pytest.approx([lib[k] for k in SCALARS], abs=1e-6)
        assert [row[f"loglik_{k}"] for k in range(3)] == pytest.approx(lib["loglik_draws"], abs=1e-6)
        assert "loglik_3" not in row and row["response"] == gold
        assert row["exact_match"] is (lib["answer"].strip() == gold.strip())
        assert row["normalised_match"] is (normalise_answer(lib["answer"]) == normalise_answer(gold))
    assert any(r["mutual_information"] > 0 for r in written)  # a mean-field posterior: some epistemic part
    answers = [r["answer"] for r in written]
    assert all(normalise_answer(a) for a in answers)  # words, so that upper case with a full stop differs
    golds = [answers[0].strip() + "  ", "The" + answers[1].upper() + ".", " nothing like it", None]
    pd.DataFrame({"question": PROMPTS, "answer": golds}).to_csv(tmp_path / "own.csv", index=False)
    assert run_cli("predict", runs["mean-field"], "--data", tmp_path / "own.csv", "--samples", 3,
                   "--max-new-tokens", 3, "--out", out) == 0
    scored = [(r["exact_match"], r["normalised_match"]) for r in _read_jsonl(out)]
    assert scored == [(True, True), (False, True), (False, False), (None, None)]


def test_a_file_of_prompts_alone_gives_unscored_answers_to_csv(runs, files, tmp_path, capsys):
    out = tmp_path / "answers.csv"
    assert run_cli("predict", runs["mean-field"], "--data", files / "prompts.csv", "--samples", 2,
                   "--max-new-tokens", 2, "--out", out) == 0
    assert "no response column 'answer'; the answers are not scored" in capsys.readouterr().err
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame["prompt"]) == PROMPTS[:3] and "response" not in frame and "exact_match" not in frame
    library = _library_rows(runs["mean-field"], PROMPTS[:3], 2, 2)
    assert list(frame["answer"]) == [r["answer"] for r in library]
    assert list(frame["mutual_information"]) == pytest.approx([r["mutual_information"] for r in library], abs=1e-6)


def test_a_point_mass_run_has_no_mutual_information(runs, files, tmp_path):
    out = tmp_path / "answers.jsonl"
    assert run_cli("predict", runs["mle"], "--data", files / "gold.csv", "--samples", 3, "--max-new-tokens", 3,
                   "--out", out) == 0
    rows = _read_jsonl(out)
    assert len(rows) == 4 and all(r["tokens"] == 3 for r in rows)
    for row in rows:
        assert row["mutual_information"] == pytest.approx(0.0, abs=1e-6)
        assert row["predictive_nll"] == pytest.approx(row["expected_nll"], abs=1e-5)
        assert row["loglik_0"] == pytest.approx(row["loglik_mean"], abs=1e-5)  # every draw is the mean


def test_without_data_the_runs_own_split_is_answered_and_scored(runs, tmp_path):
    from pyro_bhpeft.posterior import read_config
    from pyro_bhpeft.runs import recorded_data

    out = tmp_path / "answers.jsonl"
    assert run_cli("predict", runs["mle"], "--split", "train", "--samples", 1, "--max-new-tokens", 2,
                   "--out", out) == 0
    split = recorded_data(runs["mle"], read_config(runs["mle"])["meta"]).splits["train"]
    rows = _read_jsonl(out)
    assert [r["prompt"] for r in rows] == split["prompt"] and [r["response"] for r in rows] == split["response"]
    assert run_cli("predict", runs["mle"], "--split", "nope", "--out", out) == 2


def test_bad_input_is_one_line_and_exit_2(runs, files, tmp_path, capsys):
    out = tmp_path / "answers.csv"
    assert run_cli("predict", runs["mle"], "--data", files / "no_prompt.csv", "--out", out) == 2
    line = error_line(capsys)
    assert "no_prompt.csv has no prompt column 'question' (columns: text)" in line and "--prompt-column" in line
    assert run_cli("predict", runs["mle"], "--data", files / "gold.csv", "--max-new-tokens", 0, "--out", out) == 2
    assert "--max-new-tokens must be a positive integer" in error_line(capsys)
    assert not out.exists()


def test_max_new_tokens_is_said_to_be_ignored_for_a_classifier(tiny_backbone, tmp_path, capsys):
    from helpers import fit_args, reviews

    train, run = tmp_path / "train.csv", tmp_path / "run"
    reviews(20).to_csv(train, index=False)
    assert run_cli(*fit_args(tiny_backbone, train, run)) == 0
    capsys.readouterr()
    assert run_cli("predict", run, "--data", train, "--samples", 2, "--max-new-tokens", 4,
                   "--out", tmp_path / "p.csv") == 0
    assert "--max-new-tokens applies to language-model runs only; ignored" in capsys.readouterr().err


def test_the_parsers_max_new_tokens_is_the_librarys():
    from pyro_bhpeft import BayesianPEFT
    from pyro_bhpeft.cli_options import STATIC
    from pyro_bhpeft.language import generate

    default = inspect.signature(generate).parameters["max_new_tokens"].default
    assert STATIC["max_new_tokens"] == default
    assert inspect.signature(BayesianPEFT.generate).parameters["max_new_tokens"].default == default
