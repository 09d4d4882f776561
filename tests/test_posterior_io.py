"""Saving and loading posteriors: identical predictions after a round trip, JSON + safetensors only,
atomic writes (refuse, overwrite, interrupted), clear errors for missing or corrupt directories."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import pyro_bhpeft.io as io_module
import pyro_bhpeft.posterior as posterior_module
from pyro_bhpeft import AdapterConfig, LoraConfig, PeftConfig, Posterior, PrefixConfig, fit, predict, priors
from pyro_bhpeft.guides import Delta, LowRank, MeanField
from pyro_bhpeft.models import MultipleChoice, Regressor, SequenceClassifier
from pyro_bhpeft.posterior import FORMAT, PosteriorError

N = 6
HYBRID = PeftConfig(LoraConfig(r=2), AdapterConfig(bottleneck=4), PrefixConfig(length=3))
PRIOR = priors.PerSite(priors.Normal(0.8), {"*.prefix": priors.Laplace(0.2), "head.*": priors.StudentT(4.0, 1.5)})
GUIDES = {
    "meanfield": lambda m: MeanField(m, init_scale=0.05, deterministic=("*.lora_B",)),
    "lowrank": lambda m: LowRank(m, rank=3, init_scale=0.05),
    "delta": Delta,
}
MODELS = {
    "classifier": lambda b: SequenceClassifier(b, HYBRID, PRIOR, num_labels=3, pooling="cls"),
    "choice": lambda b: MultipleChoice(b, HYBRID, PRIOR),
    "regressor": lambda b: Regressor(b, HYBRID, PRIOR, target_loc=2.0, target_scale=3.0, noise_prior_scale=0.3),
}


def data_for(model_kind: str, make_tokens) -> list:
    batch = make_tokens(N, 7, choices=3 if model_kind == "choice" else None)
    labels = torch.linspace(-1, 1, N) if model_kind == "regressor" else torch.tensor([0, 1, 2, 0, 1, 2])
    return [(batch, labels)]


def fitted(make_bert, make_tokens, guide="meanfield", model_kind="classifier", steps=3):
    model = MODELS[model_kind](make_bert())
    data = data_for(model_kind, make_tokens)
    result = fit(model, GUIDES[guide](model), data, num_data=N, max_steps=steps, epochs=steps, lr=1e-2,
                 backbone_name="tiny-test-bert", meta={"task": "unit", "round": 1}, progress=False)
    return result.posterior, data


def same_prediction(a, b) -> bool:
    fields = ("probs", "mutual_information") if hasattr(a, "probs") else ("mean", "variance", "epistemic")
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in fields)


@pytest.mark.parametrize("model_kind", list(MODELS))
@pytest.mark.parametrize("guide", list(GUIDES))
def test_round_trip_gives_identical_predictions(guide, model_kind, make_bert, make_tokens, tmp_path):
    posterior, data = fitted(make_bert, make_tokens, guide, model_kind)
    posterior.save(tmp_path / "run")
    loaded = Posterior.load(tmp_path / "run", backbone=make_bert())
    assert type(loaded.model) is type(posterior.model) and type(loaded.guide) is type(posterior.guide)
    assert loaded.model.model_kwargs() == posterior.model.model_kwargs()
    assert loaded.model.peft_config == posterior.model.peft_config and loaded.model.prior == PRIOR
    assert loaded.backbone_name == "tiny-test-bert" and loaded.meta == {"task": "unit", "round": 1}
    original, again = posterior.guide.state_dict(), loaded.guide.state_dict()
    assert original.keys() == again.keys() and all(torch.equal(original[k], again[k]) for k in original)
    for k in (4, 0):
        assert same_prediction(predict(posterior, data, num_samples=k, seed=7),
                               predict(loaded, data, num_samples=k, seed=7))
    if guide != "delta":  # a different seed gives different draws: the equality above is not vacuous
        assert not same_prediction(predict(posterior, data, num_samples=4, seed=7),
                                   predict(loaded, data, num_samples=4, seed=8))


def test_saved_directory_is_json_and_safetensors_only(make_bert, make_tokens, tmp_path):
    posterior, _ = fitted(make_bert, make_tokens, "lowrank")
    assert posterior.save(tmp_path / "run") == tmp_path / "run"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "guide.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging directory left behind
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["format"] == FORMAT and config["backbone"] == "tiny-test-bert"
    assert config["model"] == {"class": "SequenceClassifier", "kwargs": {"pooling": "cls", "num_labels": 3}}
    assert config["guide"] == {"class": "LowRank", "kwargs": {"rank": 3, "init_scale": 0.05}}
    assert priors.prior_from_dict(config["prior"]) == PRIOR
    assert PeftConfig.from_dict(config["peft"]) == HYBRID
    with safe_open(str(tmp_path / "run" / "guide.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(posterior.guide.state_dict())
    for file in (tmp_path / "run").iterdir():
        assert not file.read_bytes().startswith(b"\x80")  # no pickle protocol header
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755  # readable like the files in it, not private


def test_existing_directory_is_refused_untouched_unless_overwrite(make_bert, make_tokens, tmp_path):
    posterior, data = fitted(make_bert, make_tokens)
    target = tmp_path / "run"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        posterior.save(target)
    with pytest.raises(FileExistsError, match="not a directory written by pyro-bhpeft"):  # not a run: never replaced
        posterior.save(target, overwrite=True)
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    (target / "notes.txt").unlink()
    posterior.save(target)  # an empty folder holds nothing to lose
    posterior.save(target, overwrite=True)  # a run of ours is replaced
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "guide.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    loaded = Posterior.load(target, backbone=make_bert())
    assert same_prediction(predict(posterior, data, num_samples=2), predict(loaded, data, num_samples=2))


@pytest.mark.parametrize("where", ["guide", "config"])
def test_failure_midway_leaves_no_partial_directory(where, make_bert, make_tokens, tmp_path, monkeypatch):
    posterior, _ = fitted(make_bert, make_tokens, steps=1)

    def half_written_then_fail(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    if where == "guide":
        monkeypatch.setattr(posterior_module, "save_file", half_written_then_fail)
    else:  # guide.safetensors is written, then the config fails
        monkeypatch.setattr(posterior_module, "write_json", fail)
    with pytest.raises((OSError, KeyboardInterrupt)):
        posterior.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_previous_posterior(make_bert, make_tokens, tmp_path, monkeypatch):
    posterior, _ = fitted(make_bert, make_tokens, steps=1)
    posterior.save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(posterior_module, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        posterior.save(tmp_path / "run", overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), io_module.atomic_dir(target) as stage:
        (stage / "a").write_text("1")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with io_module.atomic_dir(target) as stage:
        (stage / "a").write_text("1")
    assert (target / "a").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_loading_a_missing_directory_is_a_clear_error(make_bert, tmp_path):
    with pytest.raises(PosteriorError, match="config.json is missing"):
        Posterior.load(tmp_path / "nowhere", backbone=make_bert())
    (tmp_path / "empty").mkdir()
    with pytest.raises(PosteriorError, match="config.json is missing"):
        Posterior.load(tmp_path / "empty", backbone=make_bert())


@pytest.fixture
def saved(make_bert, make_tokens, tmp_path):
    posterior, _ = fitted(make_bert, make_tokens, steps=1)
    return posterior.save(tmp_path / "run")


def test_loading_a_corrupt_config_is_a_clear_error(saved, make_bert):
    (saved / "config.json").write_text('{"format": "pyro-bhpeft/1", "model": ')  # truncated
    with pytest.raises(PosteriorError, match="corrupt"):
        Posterior.load(saved, backbone=make_bert())


def test_loading_without_guide_weights_or_with_a_foreign_format_is_a_clear_error(saved, make_bert):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "format": "something-else/9"}))
    with pytest.raises(PosteriorError, match="not a complete"):
        Posterior.load(saved, backbone=make_bert())
    (saved / "config.json").write_text(json.dumps(config))
    (saved / "guide.safetensors").unlink()
    with pytest.raises(PosteriorError, match="not a complete"):
        Posterior.load(saved, backbone=make_bert())


@pytest.mark.parametrize("damage", ["truncated", "wrong-shapes", "missing-tensors"])
def test_loading_corrupt_guide_weights_is_a_clear_error(damage, saved, make_bert):
    file = saved / "guide.safetensors"
    if damage == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:
        tensors = load_file(str(file))
        if damage == "wrong-shapes":
            tensors = {k: torch.zeros(*v.shape, 2) for k, v in tensors.items()}
        else:
            tensors = dict(list(tensors.items())[:1])
        save_file(tensors, str(file))
    with pytest.raises(PosteriorError, match="guide.safetensors"):
        Posterior.load(saved, backbone=make_bert())


def test_loading_without_a_recorded_backbone_asks_for_one(make_bert, make_tokens, tmp_path):
    model = SequenceClassifier(make_bert(), PeftConfig(LoraConfig(r=2)))
    data = data_for("classifier", make_tokens)
    data = [(data[0][0], data[0][1] % 2)]
    posterior = fit(model, MeanField(model), data, num_data=N, max_steps=1, progress=False).posterior
    posterior.save(tmp_path / "run")
    with pytest.raises(PosteriorError, match="backbone="):
        Posterior.load(tmp_path / "run")


@pytest.mark.slow
def test_packaged_minilm_round_trip_reloads_the_backbone_by_name(tmp_path):
    from pyro_bhpeft import load_backbone

    backbone, tokenizer, name = load_backbone("minilm")
    enc = tokenizer(["a gripping film", "dull and far too long", "I loved it", "a mess"], padding=True,
                    return_tensors="pt")
    data = [({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, torch.tensor([1, 0, 1, 0]))]
    model = SequenceClassifier(backbone, PeftConfig.hybrid(r=4, bottleneck=8, prefix_length=4), num_labels=2)
    result = fit(model, MeanField(model), data, num_data=4, max_steps=2, epochs=2, backbone_name=name, progress=False)
    result.posterior.save(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["backbone"] == "minilm"
    loaded = Posterior.load(tmp_path / "run")  # no backbone passed: reloaded by its recorded name
    assert loaded.backbone_name == "minilm" and loaded.model.backbone is not backbone
    for k in (3, 0):
        assert same_prediction(predict(result.posterior, data, num_samples=k, seed=5),
                               predict(loaded, data, num_samples=k, seed=5))
