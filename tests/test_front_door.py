"""The front door, BayesianPEFT: every data form fits the same posterior, texts predict without labels, a
second round shares the backbone and starts from the first posterior, save/load round-trips, and the
README's first code block runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import datasets
import pytest
import torch

from helpers import save_tiny_backbone
from pyro_bhpeft import BayesianPEFT, ConfigError, LoraConfig, PeftConfig, Recipe
from pyro_bhpeft.continual import PosteriorPrior
from pyro_bhpeft.priors import Laplace

TEXTS = ["good film", "bad film", "great movie", "awful movie", "the plot was very good", "a poor actor"] * 4
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"] * 4
NEW = ["good movie", "awful film", "the actor was great"]
SMALL = {"max_length": 16, "batch_size": 8}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


def _fit(bert_dir, data, **kw):
    model = BayesianPEFT(bert_dir, r=2, lora_alpha=4, target_modules=["query", "value"], **{**SMALL, **kw})
    return model.fit(data, epochs=1, progress=False)


def test_every_data_form_fits_the_same_posterior(bert_dir):
    import pandas as pd

    frame = pd.DataFrame({"text": TEXTS, "label": LABELS})
    forms = [(TEXTS, LABELS), {"text": TEXTS, "label": LABELS}, frame, datasets.Dataset.from_pandas(frame)]
    fits = [_fit(bert_dir, form) for form in forms]
    reference = fits[0].predict(NEW, samples=4).probs
    for fitted in fits[1:]:
        torch.testing.assert_close(fitted.predict(NEW, samples=4).probs, reference, rtol=0, atol=0)
    assert fits[0].spec.label_names == ("neg", "pos")  # classes read from the labels, sorted


def test_texts_predict_without_labels_as_their_labelled_rows_do(bert_dir):
    model = _fit(bert_dir, (TEXTS, LABELS))
    labelled = model.predict((NEW, ["pos", "neg", "pos"]), samples=4)
    texts = model.predict(NEW, samples=4)
    torch.testing.assert_close(texts.probs, labelled.probs, rtol=0, atol=0)
    assert texts.labels is None and labelled.labels.tolist() == [1, 0, 1]


def test_a_loader_of_tokenised_batches_fits_once_the_task_is_known(bert_dir):
    model = _fit(bert_dir, (TEXTS, LABELS))
    steps = model.result.steps
    model.fit(model.loader((TEXTS, LABELS), split="train", batch_size=8), progress=False)
    assert model.result.steps == steps  # the same data in the same number of batches
    with pytest.raises(ConfigError, match="needs the task up front"):
        BayesianPEFT(bert_dir).fit(model.loader((TEXTS, LABELS), split="train"), progress=False)


def test_next_round_shares_the_backbone_and_starts_from_the_posterior(bert_dir, monkeypatch):
    first = _fit(bert_dir, (TEXTS, LABELS), prior=Laplace(0.1), guide="low-rank", rank=2)
    before = first.predict(NEW, samples=4).probs
    import pyro_bhpeft.backbone as backbone

    monkeypatch.setattr(backbone, "load_backbone", lambda *a, **k: pytest.fail("the next round reloaded"))
    second = first.next_round()
    assert isinstance(second.prior, PosteriorPrior) and second.round == 2 and second.parent is first
    assert second.backbone.model is first.backbone.model
    locs = {n: m.loc for n, m in first.posterior.marginals().items()}
    for name, loc in second.prior.locs.items():
        torch.testing.assert_close(loc, locs[name])
    second.fit((TEXTS[:12], LABELS[:12]), progress=False)
    torch.testing.assert_close(first.predict(NEW, samples=4).probs, before, rtol=0, atol=0)  # round 1 is kept
    assert isinstance(first.prior, Laplace)


def test_a_round_after_a_recipe_measured_to_forget_warns_and_keeps_the_recipe(bert_dir, recwarn):
    first = _fit(bert_dir, (TEXTS, LABELS), recipe="bayes-lora-fs-mean")
    second = first.next_round()
    said = [str(w.message) for w in recwarn.list if "forgets" in str(w.message)]
    assert len(said) == 1 and 'recipe="mean-field-lora"' in said[0] and second.recipe == first.recipe
    _fit(bert_dir, (TEXTS, LABELS), recipe="mean-field-lora").next_round()
    assert len([w for w in recwarn.list if "forgets" in str(w.message)]) == 1  # the rounds recipe: no warning


def test_save_and_load_give_the_same_predictions(bert_dir, tmp_path):
    model = _fit(bert_dir, (TEXTS, LABELS), guide="low-rank", rank=2)
    model.save(tmp_path / "run")
    back = BayesianPEFT.load(tmp_path / "run")
    torch.testing.assert_close(back.predict(NEW, samples=4).probs, model.predict(NEW, samples=4).probs,
                               rtol=0, atol=0)
    assert back.spec.label_names == ("neg", "pos") and back.recipe == model.recipe
    assert back.backbone.model is back.posterior.model.backbone  # one backbone in memory: only the tokenizer is read


def test_lora_in_peft_words_and_a_peft_lora_config(bert_dir):
    from peft import LoraConfig as PeftLoraConfig

    ours = BayesianPEFT(bert_dir, r=4, lora_alpha=8, target_modules=["query"], lora_dropout=0.1)
    theirs = BayesianPEFT(bert_dir, peft=PeftLoraConfig(r=4, lora_alpha=8, target_modules=["query"],
                                                        lora_dropout=0.1))
    expected = PeftConfig(LoraConfig(r=4, lora_alpha=8.0, target_modules=("query",), lora_dropout=0.1))
    assert ours.recipe.peft == theirs.recipe.peft == expected
    assert BayesianPEFT(bert_dir, peft="hybrid", r=2).recipe.peft.kinds == ("lora", "adapter", "prefix")


def test_a_model_object_with_its_tokenizer_fits_as_its_folder_does(bert_dir):
    from transformers import AutoModel, AutoTokenizer

    by_path = _fit(bert_dir, (TEXTS, LABELS))
    held = BayesianPEFT(AutoModel.from_pretrained(bert_dir), tokenizer=AutoTokenizer.from_pretrained(bert_dir),
                        r=2, lora_alpha=4, target_modules=["query", "value"], **SMALL)
    held.fit((TEXTS, LABELS), epochs=1, progress=False)
    torch.testing.assert_close(held.predict(NEW, samples=4).probs, by_path.predict(NEW, samples=4).probs,
                               rtol=0, atol=0)


def test_bad_arguments_are_one_line_errors(bert_dir):
    with pytest.raises(ConfigError, match="unknown option.*epoch"):
        BayesianPEFT(bert_dir, epoch=3)
    with pytest.raises(ConfigError, match="unknown task 'sentimnet'"):
        BayesianPEFT(bert_dir, task="sentimnet")
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        BayesianPEFT(torch.nn.Linear(2, 2)).backbone
    with pytest.raises(ConfigError, match="nothing is fitted yet"):
        BayesianPEFT(bert_dir).predict(NEW)
    with pytest.raises(ConfigError, match="no 'label' column"):
        BayesianPEFT(bert_dir).fit({"text": TEXTS, "y": LABELS}, progress=False)


def test_python_defaults_are_the_recipe_defaults():
    assert BayesianPEFT().recipe == Recipe()
    assert BayesianPEFT(recipe="blob").recipe.prior == "blob"


def test_a_regression_starts_from_its_own_default_recipe_and_the_options_given_still_win(bert_dir):
    from pyro_bhpeft.recipe import KIND_DEFAULTS, PRESETS

    low_rank = Recipe().with_(**PRESETS["bh-peft-low-rank"])
    assert KIND_DEFAULTS == {"regression": "bh-peft-low-rank"} and low_rank.guide == "low-rank"
    assert low_rank.peft == PeftConfig.hybrid() and low_rank != Recipe()
    assert BayesianPEFT(task="regression").recipe == low_rank  # the kind known up front
    assert BayesianPEFT(task="regression", guide="mean-field", epochs=3).recipe == low_rank.with_(guide="mean-field",
                                                                                                   epochs=3)
    small = BayesianPEFT(task="regression", r=2).recipe.peft
    assert small.lora.r == 2 and small.adapter == PeftConfig.hybrid().adapter  # the preset's parts, the rank asked
    assert BayesianPEFT(task="regression", recipe="blob").recipe == Recipe().with_(**PRESETS["blob"])  # named: kept
    assert BayesianPEFT(task="sentiment").recipe == Recipe()  # classification: Recipe() itself
    ratings = {"text": TEXTS, "label": [0.3 * i for i in range(len(TEXTS))]}  # real values: a regression
    front = BayesianPEFT(bert_dir, **SMALL).fit(ratings, max_steps=1, progress=False)  # the kind known at fit
    assert front.recipe == low_rank.with_(backbone=bert_dir, max_steps=1, **SMALL)
    assert type(front.posterior.guide).__name__ == "LowRank"
    from transformers import AutoModel, AutoTokenizer

    held = BayesianPEFT(AutoModel.from_pretrained(bert_dir), tokenizer=AutoTokenizer.from_pretrained(bert_dir), **SMALL)
    held.fit(ratings, max_steps=1, progress=False)  # a model object: its own name survives the kind's default
    assert held.recipe == front.recipe.with_(backbone=held.backbone.name) and held.backbone.name != "minilm"


def _first_python_block(readme: Path) -> str:
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python code block"
    return blocks[0]


def test_readme_front_door_is_short():
    code = _first_python_block(Path(__file__).parents[1] / "README.md")
    lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    assert len(lines) <= 12 and len(imports) <= 2, (len(lines), len(imports))


@pytest.mark.slow
def test_readme_first_code_block_runs_as_written(tmp_path, monkeypatch):
    """The README's first code block, executed as written: the packaged MiniLM and sentiment data."""
    code = _first_python_block(Path(__file__).parents[1] / "README.md")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102  (our own README)
    assert (tmp_path / "runs" / "first" / "config.json").is_file()
    assert namespace["pred"].probs.shape == (2, 2)


def test_auto_mode_is_closed_form_only_where_the_head_is_the_only_random_part(bert_dir):
    head_only = _fit(bert_dir, (TEXTS, LABELS), guide="mean-field", deterministic=("*.lora_A", "*.lora_B"))
    everything = _fit(bert_dir, (TEXTS, LABELS), guide="mean-field")
    assert head_only.predictive_mode("auto") == "closed-form" and everything.predictive_mode("auto") == "sample"
    closed, sampled = head_only.predict(NEW, mode="auto"), head_only.predict(NEW, samples=2000)
    assert closed.num_samples == 0 and (closed.probs - sampled.probs).abs().max() < 0.02
    with pytest.raises(ConfigError, match="unknown predictive mode"):
        head_only.predict(NEW, mode="laplace")


def test_random_blocks_put_variance_in_the_top_blocks_and_auto_shares_the_trunk(bert_dir):
    model = _fit(bert_dir, (TEXTS, LABELS), guide="mean-field", random_blocks=1)
    scales = {n: m.scale for n, m in model.posterior.marginals().items()}
    assert all(scales[n] is None for n in scales if n.startswith("encoder.layer.0."))
    assert all(scales[n] is not None for n in scales if n.startswith("encoder.layer.1.") or n.startswith("head."))
    assert model.predictive_mode("auto") == "shared-trunk"
    torch.testing.assert_close(model.predict(NEW, mode="auto", samples=4).probs,
                               model.predict(NEW, mode="sample", samples=4).probs, rtol=0, atol=1e-5)
    with pytest.raises(ConfigError, match="random_blocks"):
        Recipe(guide="low-rank", random_blocks=1)


def test_package_names_are_the_functions_even_after_their_modules_are_imported():
    import subprocess
    import sys

    code = ("import sys, pyro_bhpeft; assert 'torch' not in sys.modules; import pyro_bhpeft.predict; "
            "from pyro_bhpeft import predict, fit, BayesianPEFT; assert callable(predict) and "
            "predict.__module__ == 'pyro_bhpeft.predict' and pyro_bhpeft.predict is predict")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_predict_says_the_mode_auto_took_and_closed_form_matches_python(bert_dir, tmp_path, capsys):
    from pyro_bhpeft.cli import main

    model = _fit(bert_dir, (TEXTS, LABELS), guide="mean-field", deterministic=("*.lora_A", "*.lora_B"))
    model.save(tmp_path / "run")
    data = tmp_path / "new.csv"
    data.write_text("text\n" + "\n".join(NEW) + "\n")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tmp_path / "run"), "--data", str(data), "--out", str(out)]) in (0, None)
    assert "predictive mode: closed-form (auto)" in capsys.readouterr().err
    import pandas as pd

    rows = pd.read_csv(out)
    expected = model.predict(NEW, mode="closed-form").probs
    torch.testing.assert_close(torch.tensor(rows[["p_0", "p_1"]].values, dtype=torch.float32), expected,
                               rtol=0, atol=1e-5)
