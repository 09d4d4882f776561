"""The default-recipe selection rule (benchmarks/suite_select.py) on made-up cells with known winners."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import suite_select  # noqa: E402


def _cell(task: Path, method: str, seed: int, *, acc: float, nll: float, seconds: float = 100.0, ece: float = 10.0,
          test_nll: float | None = None) -> None:
    folder = task / "cells" / f"{method}-seed{seed}"
    folder.mkdir(parents=True)
    record = {"accuracy": acc, "nll": nll if test_nll is None else test_nll, "ece": ece, "ood_auroc": 0.8,
              "train_seconds": seconds, "predict_seconds": 10.0, "validation": {"accuracy": acc, "nll": nll, "ece": ece}}
    (folder / "metrics.json").write_text(json.dumps(record))


def _suite(tmp_path: Path, methods: dict[str, dict], tasks=("a", "b")) -> Path:
    for name in tasks:
        (tmp_path / name).mkdir()
        (tmp_path / name / "protocol.json").write_text('{"task": "sentiment"}')
        for method, kwargs in methods.items():
            for seed in range(3):
                _cell(tmp_path / name, method, seed, **kwargs)
    return tmp_path


def test_the_lowest_validation_nll_within_one_point_of_lora_wins(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.80, nll=1.0), "good": dict(acc=0.795, nll=0.5),
                              "lossy": dict(acc=0.78, nll=0.3),  # 2 points below LoRA: out
                              "temperature": dict(acc=0.80, nll=0.2)})  # fitted on validation: never the default
    winner, lines = suite_select.select(suite, candidates=["lora", "good", "lossy", "temperature"])
    assert winner == "good"
    assert any(line.startswith("`lossy`") and "out: validation accuracy -2.00 points from LoRA's on a" in line
               for line in lines)
    assert any(line.startswith("`temperature`") and "not eligible" in line for line in lines)


def test_a_tie_within_a_thousandth_goes_to_the_cheaper_method(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "slow": dict(acc=0.8, nll=0.5, seconds=900.0),
                              "fast": dict(acc=0.8, nll=0.5005, seconds=150.0)})
    assert suite_select.select(suite, candidates=["lora", "slow", "fast"])[0] == "fast"


def test_the_rule_reads_validation_never_test(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "x": dict(acc=0.8, nll=0.6, test_nll=0.1),
                              "y": dict(acc=0.8, nll=0.5, test_nll=0.9)})
    assert suite_select.select(suite, candidates=["lora", "x", "y"])[0] == "y"


def test_no_winner_is_named_while_a_candidate_misses_a_seed_on_a_task(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "done": dict(acc=0.8, nll=0.5),
                              "partial": dict(acc=0.8, nll=0.1)})
    for path in (suite / "b" / "cells" / "partial-seed2").iterdir():
        path.unlink()
    (suite / "b" / "cells" / "partial-seed2").rmdir()
    winner, lines = suite_select.select(suite, candidates=["lora", "done", "partial"])
    assert winner is None and lines[-1] == "still to run: `partial` on b (2 of 3 seeds in)"
    assert not any(line.startswith("`partial`") for line in lines)
    assert lines[-2] == ("so far, not a selection (the rule waits on b): mean validation NLL over a: `partial` "
                         "0.1000, `done` 0.5000, `lora` 1.0000 (not eligible)")
    assert suite_select.select(suite, candidates=["lora", "done"])[0] == "done"


def test_which_method_pairs_seeds_and_reports_ratios_to_lora(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0, ece=20.0), "half": dict(acc=0.81, nll=0.5, ece=5.0)},
                   tasks=("a",))
    text = suite_select.which_method(suite)
    row = next(line for line in text.split("## `a`")[1].splitlines() if line.startswith("| `half`"))
    assert row.split(" | ")[1:7] == ["3", "+1.00", "0.500", "5.00 (0.25x)", "+0.000", "3/3"]
    glance = next(line for line in text.split("## `a`")[0].splitlines() if line.startswith("| `half`"))
    assert glance.split(" | ")[1:] == ["0.500 · 0.25x · +1.00", "1.00x", "1.00x |"]


def test_a_method_with_seeds_still_to_run_is_set_against_loras_same_seeds(tmp_path):
    task = tmp_path / "a"
    task.mkdir()
    (task / "protocol.json").write_text('{"task": "sentiment"}')
    for seed, (acc, ece) in enumerate([(0.80, 20.0), (0.70, 10.0), (0.60, 40.0)]):
        _cell(task, "lora", seed, acc=acc, nll=1.0, ece=ece, seconds=100.0 * (seed + 1))
    for seed in (0, 1):  # seed 2, where LoRA is worst, still to run
        _cell(task, "partial", seed, acc=0.75, nll=0.5, ece=15.0, seconds=150.0 * (seed + 1))
    text = suite_select.which_method(tmp_path)
    row = next(line for line in text.split("## `a`")[1].splitlines() if line.startswith("| `partial`"))
    assert row.split(" | ")[1:5] == ["2", "+0.00", "0.500", "15.00 (1.00x)"]  # not +5.00 and 0.58x (all 3 seeds)
    assert row.split(" | ")[6:8] == ["1/2", "1.50x"]  # seed 1: ECE 15 against LoRA's 10
    glance = next(line for line in text.split("## `a`")[0].splitlines() if line.startswith("| `partial`"))
    assert glance.split(" | ")[1] == "0.500 · 1.00x · +0.00 (2 of 3 seeds)"


def test_the_glance_table_tells_a_method_still_to_run_from_one_out_of_the_selection(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "tfb": dict(acc=0.8, nll=0.9),
                              "blob": dict(acc=0.7, nll=0.5)})
    _drop(suite, "b", "tfb", [1, 2])
    _drop(suite, "b", "blob", [0, 1, 2])
    rows = {r.split(" | ")[0]: r.split(" | ")[1:3] for r in suite_select.which_method(suite).split("## `a`")[0]
            .splitlines() if r.startswith("| `")}
    assert rows["| `blob`"] == ["0.500 · 1.00x · -10.00", "–"]  # out on a: it need not run on b
    assert rows["| `tfb`"] == ["0.900 · 1.00x · +0.00", "0.900 · 1.00x · +0.00 (1 of 3 seeds)"]
    _drop(suite, "b", "tfb", [0])
    rows = {r.split(" | ")[0]: r.split(" | ")[1:3] for r in suite_select.which_method(suite).split("## `a`")[0]
            .splitlines() if r.startswith("| `")}
    assert rows["| `tfb`"][1] == "still to run"


def test_a_regression_task_is_chosen_on_its_own_among_the_methods_that_ran_there(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "class-only": dict(acc=0.8, nll=0.4),
                              "both": dict(acc=0.8, nll=0.6)}, tasks=("a",))
    (suite / "reg").mkdir()
    (suite / "reg" / "protocol.json").write_text('{"task": "vader-movie"}')
    for method, nll in (("lora", 2.0), ("both", 1.5)):  # class-only cannot score a regression
        for seed in range(3):
            folder = suite / "reg" / "cells" / f"{method}-seed{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps({"mse": 1.0, "nll": nll, "coverage90": 0.9,
                                                              "train_seconds": 1.0, "predict_seconds": 1.0,
                                                              "validation": {"mse": 1.0, "nll": nll}}))
    assert suite_select.select(suite, "classification", ["lora", "class-only", "both"])[0] == "class-only"
    assert suite_select.select(suite, "regression", ["lora", "both"])[0] == "both"
    assert suite_select.select(suite, "regression", ["lora", "both", "class-only"])[0] is None  # still to run


def test_a_candidate_out_on_one_finished_task_need_not_run_on_the_others(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.80, nll=1.0), "good": dict(acc=0.80, nll=0.5),
                              "lossy": dict(acc=0.78, nll=0.3)}, tasks=("a", "b"))
    for seed in range(3):  # lossy has not run on b at all, and good misses a seed there
        for path in (suite / "b" / "cells" / f"lossy-seed{seed}").iterdir():
            path.unlink()
        (suite / "b" / "cells" / f"lossy-seed{seed}").rmdir()
    out = suite_select.eliminated(suite_select.tasks(suite), ["lora", "good", "lossy"])
    assert list(out) == ["lossy"] and out["lossy"][0] == "a" and out["lossy"][1] == pytest.approx(-2.0)
    winner, lines = suite_select.select(suite, candidates=["lora", "good", "lossy"])
    assert winner == "good"  # lossy's missing cells on b cannot change the outcome
    assert any(line.startswith("`lossy`: out") and "need not run on b" in line for line in lines)
    assert not any(line.startswith("still to run") for line in lines)
    for path in (suite / "a" / "cells" / "lora-seed2").iterdir():  # LoRA unfinished on a: nobody is out yet
        path.unlink()
    assert suite_select.eliminated(suite_select.tasks(suite), ["good", "lossy"]) == {}


def test_a_winner_that_needs_an_optional_install_leaves_the_default_to_the_best_without_one(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "laplace-kfac-probit": dict(acc=0.8, nll=0.4),
                              "mean-field": dict(acc=0.8, nll=0.6), "tfb": dict(acc=0.8, nll=0.7)})
    names = ["lora", "laplace-kfac-probit", "mean-field", "tfb"]
    assert suite_select.needs_extra("laplace-kfac-probit") and not suite_select.needs_extra("mean-field")
    assert suite_select.select(suite, candidates=names)[0] == "laplace-kfac-probit"
    assert suite_select.select(suite, candidates=names, as_default=True)[0] == "mean-field"


def test_an_ensemble_can_win_the_rule_but_not_be_fits_default(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "ensemble": dict(acc=0.8, nll=0.4),
                              "mean-field-lora": dict(acc=0.8, nll=0.7)})
    names = ["lora", "ensemble", "mean-field-lora"]
    assert suite_select.why_not_default("ensemble") and suite_select.why_not_default("mean-field-lora") is None
    assert suite_select.select(suite, candidates=names)[0] == "ensemble"
    assert suite_select.select(suite, candidates=names, as_default=True)[0] == "mean-field-lora"
    assert suite_select.select(suite, candidates=["lora", "ensemble"], as_default=True)[0] is None


def test_exactly_one_point_below_lora_is_within_one_point(tmp_path):
    # r8-minilm's numbers: LoRA answers 479, 481, 484 of 500 validation examples right, the candidate 478, 478, 473:
    # 15 of 1,500 fewer, exactly 1 point (the float difference of the means is -1.0000000000000009)
    suite = _suite(tmp_path, {}, tasks=("a",))
    for seed, (lora, other) in enumerate([(0.958, 0.956), (0.962, 0.956), (0.968, 0.946)]):
        _cell(suite / "a", "lora", seed, acc=lora, nll=1.0)
        _cell(suite / "a", "edge", seed, acc=other, nll=0.5)
    assert suite_select.eliminated(suite_select.tasks(suite), ["edge"]) == {}
    assert suite_select.select(suite, candidates=["lora", "edge"])[0] == "edge"


def test_a_candidate_the_harness_cannot_run_on_a_task_is_out(tmp_path):
    # a causal-LM task scored by each choice's likelihood has no classifier head for the last-layer Laplace head
    # and no letters for the peft library's LoRA: neither can have cells there, so neither is within 1 point
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "mean-field": dict(acc=0.8, nll=0.6),
                              "lora-llla": dict(acc=0.8, nll=0.3)}, tasks=("a",))
    (suite / "cloze").mkdir()
    (suite / "cloze" / "protocol.json").write_text('{"task": "arc-easy", "backbone": "smollm2", "mc_scoring": "cloze"}')
    for method in ("lora", "mean-field"):
        for seed in range(3):
            _cell(suite / "cloze", method, seed, acc=0.6, nll=1.0)
    names = ["lora", "mean-field", "lora-llla", "laplace-kfac-probit"]
    refused = suite_select.cannot_run(suite, names)
    assert set(refused) == {"lora-llla", "laplace-kfac-probit"} and refused["lora-llla"][0] == "cloze"
    assert "linear classifier head" in refused["lora-llla"][1] and "peft" in refused["laplace-kfac-probit"][1]
    winner, lines = suite_select.select(suite, candidates=names)
    assert winner == "mean-field"  # lora-llla's lower NLL on task a cannot bring it back
    assert any(line.startswith("`lora-llla`: out: the harness cannot run it on cloze") for line in lines)
    assert any(line.startswith("`laplace-kfac-probit`: out") and "need not run on a" in line for line in lines)
    assert not any(line.startswith("still to run") for line in lines)


def test_a_candidate_with_a_prefix_is_refused_on_a_backbone_whose_attention_cannot_take_one(tmp_path, monkeypatch):
    # MPNet's attention skips transformers' attention registry, which our prefix goes through: the hybrid (LoRA +
    # adapter + prefix) cannot run there, LoRA-only candidates can; a BERT takes the prefix
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

    from pyro_bhpeft.compare import Protocol, refusal

    for name, config, model in (("mpnet", MPNetConfig, MPNetModel), ("bert", BertConfig, BertModel)):
        model(config(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32)).save_pretrained(tmp_path / name)
    mpnet, bert = (Protocol(task="sentiment", backbone=str(tmp_path / n)) for n in ("mpnet", "bert"))
    assert "MPNetModel's attention cannot take" in refusal(mpnet, "mean-field")
    assert refusal(mpnet, "mean-field-lora") is None and refusal(mpnet, "lora") is None
    assert refusal(bert, "mean-field") is None
    # the packaged aliases are judged by their recorded model type: nothing is fetched (the selection runs offline)
    from pyro_bhpeft import assets

    monkeypatch.setenv("PYRO_BHPEFT_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(assets, "_pip_download", lambda *a: pytest.fail("a packaged model was fetched"))
    assert "MPNetModel" in refusal(Protocol(task="sentiment", backbone="mpnet"), "mean-field")
    assert refusal(Protocol(task="sentiment", backbone="minilm"), "mean-field") is None


SUITE = Path(__file__).resolve().parent.parent / "docs" / "suite"


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_fits_default_is_what_the_committed_selection_names(kind):
    """The default of ``fit`` on each task kind the suite measures is the recipe its rule names on the committed
    cells (``Recipe()`` itself while the rule names none): a finished selection fails this until the default
    follows it, and a default changed by hand fails it too."""
    from pyro_bhpeft.compare import METHODS
    from pyro_bhpeft.data import TASKS
    from pyro_bhpeft.recipe import kind_default, kind_recipe

    winner = suite_select.select(SUITE, kind, as_default=True)[0]
    data_kinds = {TASKS[json.loads((f / "protocol.json").read_text())["task"]].kind
                  for f in suite_select.task_folders(SUITE, kind)}
    assert data_kinds, f"the suite has no {kind} task"
    for data_kind in sorted(data_kinds):
        preset = kind_default(data_kind)
        if winner is None:
            assert preset is None, f"{data_kind}: default {preset!r} while the rule names no winner"
            continue
        method = METHODS[winner]
        chosen = kind_recipe(data_kind)
        for field, value in method.base_fit.items():  # the fit the suite measured
            assert getattr(chosen, field) == value, f"{data_kind}: {field} differs from the suite's {winner!r}"
        assert (chosen.predict_samples == 0) == method.point_mass, f"{data_kind}: predicts unlike {winner!r}"


def _drop(suite: Path, task: str, method: str, seeds) -> None:
    for seed in seeds:
        folder = suite / task / "cells" / f"{method}-seed{seed}"
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def test_a_leader_no_missing_cell_could_overtake_wins_before_those_cells_run_and_as_they_would_decide(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "lead": dict(acc=0.8, nll=0.5),
                              "slow": dict(acc=0.8, nll=0.9), "close": dict(acc=0.8, nll=0.52)})
    names = ["lora", "lead", "slow", "close"]
    _drop(suite, "b", "slow", [1, 2])  # slow: at least (0.9 + 0.9 / 3) / 2 = 0.6 whatever its 2 missing seeds hold
    winner, lines = suite_select.select(suite, candidates=names)
    (tmp_path / "full").mkdir()
    assert winner == "lead" == suite_select.select(_suite(tmp_path / "full", {  # the full run's outcome, with
        "lora": dict(acc=0.8, nll=1.0), "lead": dict(acc=0.8, nll=0.5), "close": dict(acc=0.8, nll=0.52),
        "slow": dict(acc=0.8, nll=0.9)}), candidates=names)[0]  # slow's missing seeds as they would be
    assert any(line.startswith("`slow` cannot overtake `lead`") and "at least 0.6000" in line for line in lines)
    assert any(line.startswith("still to run, for the tables") for line in lines)
    _drop(suite, "b", "close", [0, 1, 2])  # close could still end at 0.26 (0 on b): it could win, so no winner yet
    assert suite_select.select(suite, candidates=names)[0] is None
    assert suite_select.lowest_possible(suite_select.tasks(suite), "close") == pytest.approx(0.26)


def test_the_default_is_decided_once_no_candidate_that_can_be_the_default_could_overtake_it(tmp_path):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "ensemble": dict(acc=0.8, nll=0.1),
                              "mean-field-lora": dict(acc=0.8, nll=0.5), "tfb": dict(acc=0.8, nll=0.9)})
    names = ["lora", "ensemble", "mean-field-lora", "tfb"]
    _drop(suite, "b", "ensemble", [0, 1, 2])  # the ensemble could still win the rule, not the default
    _drop(suite, "b", "tfb", [2])
    assert suite_select.select(suite, candidates=names)[0] is None
    assert suite_select.select(suite, candidates=names, as_default=True)[0] == "mean-field-lora"
    _drop(suite, "a", "lora", [2])  # LoRA unfinished: who is within 1 point of it is not known yet
    assert suite_select.select(suite, candidates=names, as_default=True)[0] is None


def test_selection_md_says_when_the_default_is_decided_before_the_winner(tmp_path, monkeypatch):
    suite = _suite(tmp_path, {"lora": dict(acc=0.8, nll=1.0), "ensemble": dict(acc=0.8, nll=0.1),
                              "mean-field-lora": dict(acc=0.8, nll=0.5), "tfb": dict(acc=0.8, nll=0.9)})
    _drop(suite, "b", "ensemble", [0, 1, 2])
    _drop(suite, "b", "tfb", [2])
    import suite_run

    monkeypatch.setattr(suite_run, "CANDIDATES", ("lora", "ensemble", "mean-field-lora", "tfb"))
    monkeypatch.setattr(suite_select, "figure", lambda suite: None)
    monkeypatch.setattr(sys, "argv", ["suite_select.py", str(suite)])
    suite_select.main()
    text = (suite / "selection.md").read_text()
    assert "No winner yet." in text
    assert "The default of `fit` is decided before the winner: `mean-field-lora`." in text
    assert "- `ensemble` cannot overtake" not in text  # the ensemble cannot be the default: not its line
    assert "- `tfb` cannot overtake `mean-field-lora`" in text


def _seed_cells(task: Path, method: str, **per_seed: list[float]) -> None:
    """Three seeds of ``method`` on ``task``: each metric given as its value on seeds 0, 1, 2."""
    if not (task / "protocol.json").is_file():
        task.mkdir(parents=True, exist_ok=True)
        (task / "protocol.json").write_text('{"task": "sentiment"}')
    for seed in range(3):
        record = {"train_seconds": 100.0, "predict_seconds": 10.0, "ood_auroc": 0.8, "accuracy": 0.8,
                  **{key: values[seed] for key, values in per_seed.items()}}
        record["validation"] = {"accuracy": record.get("accuracy", 0.8), "nll": record["nll"]}
        folder = task / "cells" / f"{method}-seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(record))


def test_targets_judge_every_seed_against_loras_same_seed_and_the_peers_means(tmp_path):
    import suite_targets

    task = tmp_path / "a"
    _seed_cells(task, "lora", nll=[1.0, 1.0, 1.0], ece=[20.0, 20.0, 20.0])
    _seed_cells(task, "m", nll=[0.9, 0.9, 1.2], ece=[5.0, 5.0, 20.0], accuracy=[0.79, 0.79, 0.79],
                train_seconds=[150.0] * 3)
    _seed_cells(task, "temperature", nll=[1.0, 1.0, 1.0], ece=[5.0] * 3)
    _seed_cells(task, "ensemble", nll=[0.98] * 3, ece=[5.0] * 3)
    row = suite_targets.class_row(task, suite_select.cells(task), "m")
    assert row[2:10] == ["**no**: 2/3",  # seed 2's NLL is above LoRA's seed 2
                         "**no**: 2/3",  # and its ECE only equals LoRA's there: not below
                         "yes: 0.50x",  # exactly half is at most half
                         "yes: -1.00", "yes: 1.000 against 1.000", "yes: +0.000",  # matching temperature is enough
                         "**no**: 1.000 against 0.980", "yes: 1.50x"]


def test_targets_wait_on_missing_seeds_and_peers_rather_than_judge_them(tmp_path):
    import suite_targets

    task = tmp_path / "a"
    _seed_cells(task, "lora", nll=[1.0] * 3, ece=[20.0] * 3)
    _seed_cells(task, "m", nll=[0.9] * 3, ece=[10.0] * 3)
    _seed_cells(task, "ensemble", nll=[0.5] * 3, ece=[5.0] * 3)
    for seed in (1, 2):
        for method in ("m", "ensemble"):
            (task / "cells" / f"{method}-seed{seed}" / "metrics.json").unlink()
    row = suite_targets.class_row(task, suite_select.cells(task), "m")
    assert row[2] == "1/1 so far" and row[6] == "pending (0 of 3 seeds in)" and row[8] == "pending (1 of 3 seeds in)"


def test_regression_targets_want_every_seeds_coverage_within_three_points(tmp_path):
    import suite_targets

    task = tmp_path / "r"
    _seed_cells(task, "lora", nll=[2.0] * 3, mse=[1.0] * 3, coverage90=[0.7] * 3)
    _seed_cells(task, "m", nll=[1.9, 1.9, 1.9], mse=[1.1] * 3, coverage90=[0.87, 0.93, 0.94])
    row = suite_targets.regression_row(task, suite_select.cells(task), "m")
    assert row[2:5] == ["yes: 3/3", "**no**: 91.3 % on the mean, 2/3 seeds", "**no**: 1.100x"]


def test_targets_md_judges_the_default_the_rule_names_and_counts_the_verdicts(tmp_path, monkeypatch):
    import suite_targets

    _seed_cells(tmp_path / "a", "lora", nll=[1.0] * 3, ece=[20.0] * 3)
    _seed_cells(tmp_path / "a", "m", nll=[0.9] * 3, ece=[8.0] * 3)
    monkeypatch.setattr(suite_targets, "select",
                        lambda suite, kind, as_default: ("m" if kind == "classification" else None, []))
    text = suite_targets.targets(tmp_path)
    assert "## Classification: `m`" in text and "## Regression: no default named yet" in text
    assert "Met: 6 of 6 verdicts." in text  # the peers' two are pending, not judged


def test_the_committed_which_method_and_targets_pages_are_what_the_cells_give():
    """``which-method.md`` and ``targets.md`` regenerate from the committed cells: a new cell, or a change to how
    they are judged, fails this until ``python benchmarks/suite_select.py docs/suite`` is rerun and committed."""
    import suite_targets

    assert (SUITE / "which-method.md").read_text() == suite_select.which_method(SUITE)
    assert (SUITE / "targets.md").read_text() == suite_targets.targets(SUITE)
