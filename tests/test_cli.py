"""The command line on a tiny local model and the user's own files: fit -> evaluate -> predict, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from helpers import reviews
from pyro_bhpeft.cli import build_parser, main


@pytest.fixture()
def files(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.jsonl"
    reviews(96).to_csv(train, index=False)
    reviews(32, seed=1).to_json(test, orient="records", lines=True)
    return train, test


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_fit_evaluate_predict_chain(tiny_backbone, files, tmp_path, capsys):
    train, test = files
    run = tmp_path / "run"
    code = run_cli("fit", "--train", train, "--text-column", "review", "--label-column", "sentiment",
                   "--backbone", tiny_backbone, "--peft", "lora,adapter,prefix", "--lora-r", 2, "--adapter-size", 4,
                   "--prefix-length", 2, "--max-steps", 6, "--batch-size", 8, "--max-length", 16, "--out", run)
    assert code == 0
    assert {"config.json", "guide.safetensors", "history.json"} <= {p.name for p in run.iterdir()}
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 6

    out = tmp_path / "metrics.json"
    assert run_cli("evaluate", run, "--data", test, "--text-column", "review", "--label-column", "sentiment",
                   "--samples", 3, "--out", out) == 0
    metrics = json.loads(out.read_text())
    for mode in ("samples", "mean_only"):
        assert metrics[mode]["n"] == 32 and {"nll", "brier", "ece"} <= set(metrics[mode])
    assert metrics["mean_only"]["mutual_information"] == 0.0

    preds = tmp_path / "preds.csv"
    assert run_cli("predict", run, "--data", test, "--text-column", "review", "--label-column", "sentiment",
                   "--samples", 3, "--out", preds) == 0
    table = pd.read_csv(preds)
    truth = pd.read_json(test, lines=True)
    assert list(table["text"]) == list(truth["review"])  # one row per example, in the file's order
    assert list(table["label"]) == [{"neg": 0, "pos": 1}[s] for s in truth["sentiment"]]
    assert ((table["p_0"] + table["p_1"]) - 1).abs().max() < 1e-5
    assert (table["mutual_information"] >= 0).all() and (table["entropy"] >= table["mutual_information"] - 1e-6).all()
    assert list(table["predicted_name"]) == [["neg", "pos"][i] for i in table["predicted"]]
    # evaluate and predict score the same draws (seed 0): the metrics are those of these predictions
    probs = table[["p_0", "p_1"]].to_numpy()
    assert list(table["predicted"]) == list(probs.argmax(1))
    assert metrics["samples"]["accuracy"] == pytest.approx((table["predicted"] == table["label"]).mean(), abs=1e-6)
    nll = -np.log(probs[np.arange(32), table["label"]]).mean()
    assert metrics["samples"]["nll"] == pytest.approx(nll, abs=1e-5)


def test_evaluate_and_predict_on_a_two_row_file(tiny_backbone, files, tmp_path):
    train, _ = files
    run, two = tmp_path / "run", tmp_path / "two.csv"
    assert run_cli(*_fit_args(tiny_backbone, train, run)) == 0
    reviews(2, seed=3).to_csv(two, index=False)
    out = tmp_path / "m.json"
    assert run_cli("evaluate", run, "--data", two, "--text-column", "review", "--label-column", "sentiment",
                   "--samples", 2, "--out", out) == 0
    assert json.loads(out.read_text())["samples"]["n"] == 2
    assert run_cli("predict", run, "--data", two, "--text-column", "review", "--label-column", "sentiment",
                   "--samples", 2, "--out", tmp_path / "p.jsonl") == 0
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2


def _fit_args(tiny_backbone, train, out, *extra):
    return ["fit", "--train", train, "--text-column", "review", "--label-column", "sentiment", "--backbone",
            tiny_backbone, "--max-steps", 2, "--batch-size", 8, "--max-length", 16, "--out", out, *extra]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


def test_output_directory_holding_a_run_is_refused_unless_overwrite(tiny_backbone, files, tmp_path, capsys):
    train, _ = files
    run = tmp_path / "run"
    assert run_cli(*_fit_args(tiny_backbone, train, run)) == 0
    before = (run / "guide.safetensors").read_bytes()
    capsys.readouterr()
    assert run_cli(*_fit_args(tiny_backbone, train, run)) == 2
    assert "--overwrite" in _error_line(capsys)
    assert (run / "guide.safetensors").read_bytes() == before
    assert run_cli(*_fit_args(tiny_backbone, train, run, "--overwrite", "--seed", 1)) == 0


@pytest.mark.parametrize("case, needle", [
    ("missing column", "review"),
    ("empty file", "empty"),
    ("not text", "text"),
    ("unknown task", "sentiment"),
    ("unknown backbone", "backbone"),
    ("bad peft", "--peft"),
    ("rank zero", "rank"),
])
def test_bad_input_is_one_line_and_exit_code_2(case, needle, tiny_backbone, files, tmp_path, capsys):
    train, _ = files
    out = tmp_path / "run"
    args = _fit_args(tiny_backbone, train, out)
    if case == "missing column":
        pd.DataFrame({"text": ["a"], "sentiment": ["pos"]}).to_csv(train, index=False)
    elif case == "empty file":
        train.write_text("")
    elif case == "not text":
        pd.DataFrame({"review": [1.5, 2.5] * 10, "sentiment": ["pos", "neg"] * 10}).to_csv(train, index=False)
    elif case == "unknown task":
        args = ["fit", "--task", "no-such-task", "--out", out]
    elif case == "unknown backbone":
        args[args.index(tiny_backbone)] = "no_such_model"
    elif case == "bad peft":
        args += ["--peft", "lora,banana"]
    elif case == "rank zero":
        args += ["--lora-r", "0"]
    assert run_cli(*args) == 2
    assert needle in _error_line(capsys).lower()
    assert not out.exists()


def test_label_outside_the_class_list(tiny_backbone, files, tmp_path, capsys):
    train, test = files
    run = tmp_path / "run"
    assert run_cli(*_fit_args(tiny_backbone, train, run)) == 0
    capsys.readouterr()
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"review": ["the film was good"], "sentiment": ["meh"]}).to_csv(bad, index=False)
    assert run_cli("evaluate", run, "--data", bad, "--text-column", "review", "--label-column", "sentiment") == 2
    assert "meh" in _error_line(capsys)


def test_evaluate_on_a_missing_run_is_a_clear_error(tmp_path, capsys):
    assert run_cli("evaluate", tmp_path / "nothing") == 2
    assert "config.json is missing" in _error_line(capsys)


def test_update_makes_a_child_round_and_history_shows_the_chain(tiny_backbone, files, tmp_path, capsys):
    from pyro_bhpeft import Posterior
    from pyro_bhpeft.continual import PosteriorPrior

    train, test = files
    parent, child = tmp_path / "round1", tmp_path / "round2"
    assert run_cli(*_fit_args(tiny_backbone, train, parent)) == 0
    before = {p.name: p.read_bytes() for p in parent.iterdir()}
    second = tmp_path / "new.csv"
    reviews(64, seed=5).to_csv(second, index=False)
    assert run_cli("update", "--from", parent, "--train", second, "--text-column", "review", "--label-column",
                   "sentiment", "--temper", 2.0, "--max-steps", 2, "--out", child) == 0
    assert {p.name: p.read_bytes() for p in parent.iterdir()} == before  # the parent is only read
    round2 = Posterior.load(child)
    assert isinstance(round2.model.prior, PosteriorPrior)
    assert round2.meta["round"] == 2 and round2.meta["parent"] == str(parent.resolve())
    assert round2.meta["prior_from"]["temper"] == 2.0 and len(round2.meta["data"]["hash"]) == 16
    assert "forgets" not in capsys.readouterr().err  # the mean-field recipe: rounds are what it serves
    assert run_cli("history", child) == 0
    out = capsys.readouterr().out
    assert out.index("round 1") < out.index("round 2") and "temper 2" in out


def test_update_of_a_run_whose_recipe_forgets_across_rounds_keeps_it_and_says_so(tiny_backbone, files, tmp_path,
                                                                                  capsys):
    from pyro_bhpeft import Posterior

    train, _ = files
    parent, child = tmp_path / "round1", tmp_path / "round2"
    assert run_cli(*_fit_args(tiny_backbone, train, parent, "--recipe", "bayes-lora-fs-mean")) == 0
    capsys.readouterr()
    assert run_cli("update", "--from", parent, "--train", train, "--text-column", "review", "--label-column",
                   "sentiment", "--max-steps", 2, "--out", child) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "forgets" in line]
    assert len(said) == 1 and said[0].startswith("update: warning: this run's recipe (bayes-lora-fs)")
    assert "--recipe mean-field-lora" in said[0]
    assert Posterior.load(child).meta["recipe"] == Posterior.load(parent).meta["recipe"]  # kept, not switched


def test_update_from_a_missing_parent_writes_nothing(files, tmp_path, capsys):
    train, _ = files
    out = tmp_path / "round2"
    assert run_cli("update", "--from", tmp_path / "nothing", "--train", train, "--out", out) == 2
    assert "config.json is missing" in _error_line(capsys)
    assert not out.exists()


def test_diagnose_writes_khat_summary_and_figures_and_refuses_point_estimates(tiny_backbone, files, tmp_path, capsys):
    train, _ = files
    run, point = tmp_path / "run", tmp_path / "point"
    assert run_cli(*_fit_args(tiny_backbone, train, run, "--peft", "lora,adapter")) == 0
    assert run_cli("diagnose", run, "--draws", 20, "--examples", 16) == 0
    assert "Pareto k-hat" in capsys.readouterr().out
    folder = run / "diagnostics"
    facts = json.loads((folder / "diagnostics.json").read_text())
    assert facts["draws"] == 20 and facts["examples"] == 16 and facts["num_data"] == json.loads(
        (run / "config.json").read_text())["meta"]["data"]["size"]
    assert facts["pareto_khat"] == facts["pareto_khat"] and facts["reliable"] == (facts["pareto_khat"] < 0.7)
    summary = pd.read_csv(folder / "summary.csv", index_col=0)
    assert {"mean", "sd"} <= set(summary.columns) and any(i.endswith("lora_A|rms") for i in summary.index)
    assert (summary.loc[[i for i in summary.index if i.endswith("|rms")], "mean"] > 0).all()
    for figure in ("forest-rms.png", "densities.png", "scales.png", "elbo.png"):
        assert (folder / figure).stat().st_size > 1000
    assert facts["sites"] == 18  # 2 blocks x (4 LoRA + 4 adapter sites) + head weight and bias

    assert run_cli(*_fit_args(tiny_backbone, train, point, "--guide", "mle")) == 0
    capsys.readouterr()
    assert run_cli("diagnose", point) == 2
    assert "point estimate" in _error_line(capsys)


def test_train_size_keeps_a_seeded_random_subset_and_is_recorded(tiny_backbone, files, tmp_path, capsys):
    train, _ = files
    run = tmp_path / "run"
    assert run_cli(*_fit_args(tiny_backbone, train, run, "--train-size", 20)) == 0
    meta = json.loads((run / "config.json").read_text())["meta"]
    assert meta["data"]["size"] == 20 and meta["source"]["train_size"] == 20
    from pyro_bhpeft.runs import DataSource

    full, kept = DataSource({k: v for k, v in meta["source"].items() if k != "train_size"}).load(), \
        DataSource(meta["source"]).load()
    kept_text, full_text = kept.splits["train"]["text"], full.splits["train"]["text"]
    assert len(kept_text) == 20 and kept_text != full_text[:20]  # random rows, not the first
    rest = iter(full_text)
    assert all(t in rest for t in kept_text)  # a subsequence: kept in their original order
    assert DataSource(meta["source"]).load().splits["train"]["text"] == kept_text  # reproducible
    assert kept.splits["test"]["text"] == full.splits["test"]["text"]
    legacy = {k: v for k, v in meta["source"].items() if k != "subset_seed"}  # runs saved before random subsets
    assert DataSource(legacy).load().splits["train"]["text"] == full_text[:20]

    # diagnose reloads exactly the subset the run saw; data that changed since the fit is refused
    capsys.readouterr()
    assert run_cli("diagnose", run, "--draws", 10, "--examples", 8) == 0
    assert json.loads((run / "diagnostics" / "diagnostics.json").read_text())["num_data"] == 20
    config = json.loads((run / "config.json").read_text())
    config["meta"]["source"].pop("subset_seed")
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert run_cli("diagnose", run, "--draws", 10) == 2
    assert "changed since the fit" in _error_line(capsys)

    capsys.readouterr()
    assert run_cli(*_fit_args(tiny_backbone, train, tmp_path / "bad", "--train-size", 0)) == 2
    assert "--train-size" in _error_line(capsys)


def test_evaluate_and_predict_read_a_new_file_with_the_run_s_columns(tiny_backbone, tmp_path, capsys):
    train, new = tmp_path / "train.csv", tmp_path / "new.csv"
    reviews(96).rename(columns={"review": "body", "sentiment": "topic"}).to_csv(train, index=False)
    fresh = reviews(12, seed=4).rename(columns={"review": "body", "sentiment": "topic"})
    fresh.to_csv(new, index=False)
    run = tmp_path / "run"
    assert run_cli("fit", "--train", train, "--text-column", "body", "--label-column", "topic", "--backbone",
                   tiny_backbone, "--max-steps", 2, "--batch-size", 8, "--max-length", 16, "--out", run) == 0
    out, preds = tmp_path / "m.json", tmp_path / "p.csv"
    assert run_cli("evaluate", run, "--data", new, "--samples", 2, "--out", out) == 0  # no column flags
    assert json.loads(out.read_text())["samples"]["n"] == 12
    assert run_cli("predict", run, "--data", new, "--samples", 2, "--out", preds) == 0
    table = pd.read_csv(preds)
    assert list(table["text"]) == list(fresh["body"]) and list(table["label"]) == [
        {"neg": 0, "pos": 1}[t] for t in fresh["topic"]]

    # a flag given still wins over the run's column
    other = tmp_path / "other.csv"
    fresh.rename(columns={"body": "words"}).to_csv(other, index=False)
    capsys.readouterr()
    assert run_cli("evaluate", run, "--data", other, "--out", out) == 2
    assert "body" in _error_line(capsys)  # the run's column, which this file lacks
    assert run_cli("predict", run, "--data", other, "--text-column", "words", "--samples", 2, "--out", preds) == 0
    assert list(pd.read_csv(preds)["text"]) == list(fresh["body"])
    # column flags mean nothing without --data
    capsys.readouterr()
    assert run_cli("evaluate", run, "--text-column", "words") == 2
    assert "--data" in _error_line(capsys)


def _defaults(command: str) -> dict[str, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {a.dest: a.default for a in sub._actions if a.dest != "help"}


def test_cli_defaults_are_the_library_defaults():
    import dataclasses

    from pyro_bhpeft.compare import Protocol
    from pyro_bhpeft.config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig
    from pyro_bhpeft.predict import DEFAULT_SAMPLES
    from pyro_bhpeft.recipe import Recipe
    from pyro_bhpeft.cli_options import protocol_from as _protocol, recipe_from as _recipe

    def plain_defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    fit = _defaults("fit")
    overlap = {k: v for k, v in plain_defaults(Recipe).items() if k in fit}
    assert len(overlap) >= 14 and {k: fit[k] for k in overlap} == overlap
    parts = {"lora_r": LoraConfig.r, "lora_alpha": LoraConfig.lora_alpha, "lora_targets": LoraConfig.target_modules,
             "adapter_size": AdapterConfig.bottleneck, "prefix_length": PrefixConfig.length}
    assert {k: fit[k] for k in parts} == parts
    args = build_parser().parse_args(["fit", "--train", "x.csv", "--out", "run"])
    assert _recipe(args) == Recipe() and Recipe().peft == PeftConfig()

    compare = _defaults("compare")
    overlap = {k: v for k, v in plain_defaults(Protocol).items() if k in compare}
    assert len(overlap) >= 11 and {k: compare[k] for k in overlap} == overlap
    assert _protocol(build_parser().parse_args(["compare"])) == Protocol()

    # one posterior sample count: evaluate, predict, compare, the demo and predict() agree
    from pyro_bhpeft.demo import DEMO_SAMPLES
    from pyro_bhpeft.predict import predict
    import inspect

    assert _defaults("evaluate")["samples"] is _defaults("predict")["samples"] is None  # the run's recipe's
    assert Recipe().samples == DEFAULT_SAMPLES == 8 and fit["predict_samples"] is Recipe.predict_samples is None
    assert compare["samples"] == Protocol.samples == DEMO_SAMPLES == DEFAULT_SAMPLES
    assert inspect.signature(predict).parameters["num_samples"].default == DEFAULT_SAMPLES


def test_fit_on_a_regression_starts_from_its_kind_default_as_python_does():
    from pyro_bhpeft import BayesianPEFT
    from pyro_bhpeft.cli import parse_args
    from pyro_bhpeft.cli_commands import _kind_recipe
    from pyro_bhpeft.cli_options import recipe_from as _recipe
    from pyro_bhpeft.recipe import PRESETS, Recipe

    def chosen(*flags: str, kind: str = "regression"):
        args = parse_args(["fit", "--train", "x.csv", "--out", "run", *flags])
        return _kind_recipe(args, _recipe(args), kind)

    low_rank = Recipe().with_(**PRESETS["bh-peft-low-rank"])
    recipe, said = chosen()
    assert recipe == low_rank == BayesianPEFT(task="regression").recipe and "recipe bh-peft-low-rank" in said[0]
    assert chosen(kind="classification") == (Recipe(), [])
    flags = chosen("--guide", "mean-field", "--epochs", "3", "--lora-r", "4")[0]  # flags win over the kind's default
    assert flags == BayesianPEFT(task="regression", guide="mean-field", epochs=3, r=4).recipe
    assert flags.guide == "mean-field" and flags.peft.lora.r == 4 and flags.peft.adapter is not None
    assert chosen("--recipe", "blob") == (Recipe().with_(**PRESETS["blob"]), [])  # a named recipe is kept


def test_a_recipe_preset_sets_the_defaults_and_flags_still_win():
    from pyro_bhpeft.cli import parse_args
    from pyro_bhpeft.cli_options import recipe_from as _recipe
    from pyro_bhpeft.recipe import PRESETS, Recipe

    base = ["fit", "--train", "x.csv", "--out", "run", "--recipe"]
    assert _recipe(parse_args(base + ["blob"])) == Recipe().with_(**PRESETS["blob"])
    assert _recipe(parse_args(base + ["bh-peft-fs"])) == Recipe().with_(**PRESETS["bh-peft-fs"])
    changed = _recipe(parse_args(base + ["blob", "--no-flipout", "--prior-scale", "0.1"]))
    assert changed == Recipe().with_(**{**PRESETS["blob"], "flipout": False, "prior_scale": 0.1})


def test_a_run_predicts_with_its_recipes_draws_unless_told(tiny_backbone, files, tmp_path, capsys):
    """bayes-lora-fs-mean records predict_samples 0: evaluate and predict then score the posterior mean by default
    (the same numbers as --samples 0), --samples still draws, and the Python front door reads the same default."""
    from pyro_bhpeft import BayesianPEFT
    from pyro_bhpeft.cli import parse_args
    from pyro_bhpeft.cli_options import recipe_from as _recipe
    from pyro_bhpeft.recipe import PRESETS, Recipe

    preset = Recipe().with_(**PRESETS["bayes-lora-fs-mean"])
    assert preset == Recipe().with_(**PRESETS["bayes-lora-fs"], predict_samples=0) and preset.samples == 0
    assert _recipe(parse_args(["fit", "--train", "x", "--out", "r", "--recipe", "bayes-lora-fs-mean"])) == preset
    assert Recipe.from_dict(preset.to_dict()) == preset and "predict_samples" not in Recipe().to_dict()
    train, test = files
    run = tmp_path / "run"
    assert run_cli(*_fit_args(tiny_backbone, train, run, "--recipe", "bayes-lora-fs-mean", "--peft", "lora",
                              "--lora-r", 2)) == 0
    where = ("--data", test, "--text-column", "review", "--label-column", "sentiment")
    scored = {}
    for name, flags in (("default", ()), ("mean", ("--samples", 0)), ("drawn", ("--samples", 3))):
        assert run_cli("evaluate", run, *where, *flags, "--out", tmp_path / f"{name}.json") == 0
        assert run_cli("predict", run, *where, *flags, "--out", tmp_path / f"{name}.csv") == 0
        scored[name] = (json.loads((tmp_path / f"{name}.json").read_text())["samples"],
                        pd.read_csv(tmp_path / f"{name}.csv"))
    assert scored["default"][0] == scored["mean"][0] and scored["default"][0]["num_samples"] == 0
    pd.testing.assert_frame_equal(scored["default"][1], scored["mean"][1])
    assert (scored["default"][1]["mutual_information"] == 0).all()
    assert scored["drawn"][0]["num_samples"] == 3 and scored["drawn"][1]["mutual_information"].max() > 0
    loaded = BayesianPEFT.load(run)
    assert loaded.recipe.samples == 0
    texts = list(pd.read_json(test, lines=True)["review"][:4])
    torch = pytest.importorskip("torch")
    torch.testing.assert_close(loaded.predict(texts).probs, loaded.predict(texts, samples=0).probs, rtol=0, atol=0)
    assert run_cli("evaluate", run, *where, "--samples", -1) == 2
    assert "--samples must be >= 0" in capsys.readouterr().err
    assert run_cli(*_fit_args(tiny_backbone, train, tmp_path / "bad", "--predict-samples", -1)) == 2
    assert "predict_samples is a number of posterior draws >= 0" in capsys.readouterr().err


def test_the_gates_preset_keeps_its_gate_config_and_the_gate_options_change_it():
    from pyro_bhpeft.cli import parse_args
    from pyro_bhpeft.cli_options import recipe_from as _recipe
    from pyro_bhpeft.layers.gates import GatedLoraConfig
    from pyro_bhpeft.recipe import PRESETS, Recipe

    base = ["fit", "--train", "x.csv", "--out", "run", "--recipe", "lora-gates"]
    assert _recipe(parse_args(base)) == Recipe().with_(**PRESETS["lora-gates"])
    changed = _recipe(parse_args(base + ["--rank-prior", "2.5", "--bit-prior", "0.5", "--gate-noise", "none"]))
    assert changed.peft.get("gated-lora") == GatedLoraConfig(rank_prior=2.5, bit_prior=0.5, noise="none")
    assert changed.peft.lora is None


def test_choices_come_from_the_registries(tmp_path, capsys):
    from pyro_bhpeft.guides import GUIDES, Delta, GuideKind
    from pyro_bhpeft.cli import parse_args
    from pyro_bhpeft.cli_options import UserError, check_choices, recipe_from as _recipe

    argv = ["fit", "--train", "x.csv", "--out", "run", "--guide", "toy"]
    with pytest.raises(UserError, match="--guide toy: choose one of mean-field, low-rank"):
        check_choices(parse_args(argv))
    assert run_cli("fit", "--train", "x.csv", "--out", tmp_path / "run", "--guide", "toy") == 2
    assert "--guide toy: choose one of" in _error_line(capsys)
    GUIDES.register("toy", GuideKind(Delta, lambda model, r: Delta(model), point_mass=True))
    try:
        check_choices(parse_args(argv))
        assert _recipe(parse_args(argv)).guide == "toy"
    finally:
        GUIDES.unregister("toy")
    assert run_cli("compare", "--methods", "lora,nope", "--out", "x") == 2
    assert "unknown comparison method 'nope'; choose from lora," in capsys.readouterr().err


def test_cloze_scoring_is_a_flag_of_fit_and_compare_as_it_is_a_field_of_recipe_and_protocol(capsys):
    from pyro_bhpeft.cli import parse_args
    from pyro_bhpeft.cli_options import protocol_from as _protocol, recipe_from as _recipe
    from pyro_bhpeft.compare import Protocol
    from pyro_bhpeft.recipe import Recipe

    fit = parse_args(["fit", "--train", "x.csv", "--out", "run", "--mc-scoring", "cloze"])
    assert _recipe(fit) == Recipe(mc_scoring="cloze")
    compare = parse_args(["compare", "--backbone", "smollm2", "--mc-scoring", "cloze-mean"])
    assert _protocol(compare) == Protocol(backbone="smollm2", mc_scoring="cloze-mean")
    with pytest.raises(SystemExit) as exit_:
        parse_args(["fit", "--train", "x.csv", "--out", "run", "--mc-scoring", "choices"])
    assert exit_.value.code == 2 and "choose from 'letters', 'cloze', 'cloze-mean'" in capsys.readouterr().err
