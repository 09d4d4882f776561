"""One record per concept: a PEFT kind, a prior and a task kind each have one registry entry, and the
by-name lookups other code uses (PEFT_CONFIGS, PRIORS, TASK_KINDS) are views of it."""

from __future__ import annotations

import dataclasses

import pytest

from pyro_bhpeft import ConfigError, priors
from pyro_bhpeft.config import PEFT_CONFIGS, PEFT_KINDS, LoraConfig
from pyro_bhpeft.layers import register_peft_kind, unregister_peft_kind
from pyro_bhpeft.models import TASK_KINDS, SequenceClassifier
from pyro_bhpeft.registry import RecordView, Registry
from pyro_bhpeft.task_kinds import TASK_KIND_RECORDS


@dataclasses.dataclass(frozen=True)
class Pair:
    left: object = None
    right: object = None


def test_two_views_fill_one_record_and_unregistering_one_field_keeps_the_other():
    records = Registry("thing")
    left, right = RecordView(records, "left", Pair), RecordView(records, "right", Pair)
    left.register("a", 1)
    right.register("a", 2)
    right.register("b", 3)
    assert records["a"] == Pair(1, 2) and left.names() == ["a"] and right.names() == ["a", "b"]
    with pytest.raises(ConfigError, match="thing 'a' is already registered"):
        left.register("a", 5)
    with pytest.raises(ConfigError, match="unknown thing 'b'; choose one of a"):
        left["b"]
    left.unregister("a")
    assert records["a"] == Pair(None, 2) and "a" not in left and right["a"] == 2
    right.unregister("a")
    assert "a" not in records


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    width: int = 1


def test_a_peft_kind_is_one_record_and_its_config_lookup_a_view():
    add = lambda target, config: []  # noqa: E731
    register_peft_kind("tiny", TinyConfig, add)
    try:
        assert PEFT_KINDS["tiny"].config is TinyConfig and PEFT_KINDS["tiny"].add is add
        assert PEFT_CONFIGS["tiny"] is TinyConfig and "tiny" in PEFT_CONFIGS
    finally:
        unregister_peft_kind("tiny")
    assert "tiny" not in PEFT_CONFIGS and "tiny" not in PEFT_KINDS
    assert PEFT_CONFIGS["lora"] is LoraConfig is PEFT_KINDS["lora"].config


def test_a_prior_is_one_record_with_its_class_and_its_by_name_factory():
    normal = priors.PRIOR_KINDS["normal"]
    assert normal.cls is priors.Normal and normal.by_name(0.5) == priors.Normal(scale=0.5) == priors.PRIORS["normal"](0.5)
    assert priors.PRIORS.names() == ["normal", "laplace", "student-t", "fan-in", "learned", "flat", "blob",
                                     "function-space"]  # the CLI's order
    assert "per-site" not in priors.PRIORS and priors.PRIOR_KINDS["per-site"].cls is priors.PerSite
    assert priors.PRIOR_KINDS["blob"].cls is None  # built in Python from PerSite; nothing of its own to load


def test_a_prior_class_registered_from_outside_loads_but_is_not_a_cli_name():
    @priors.register_prior
    @dataclasses.dataclass(frozen=True)
    class Shrink(priors.Normal):
        type_name = "shrink"

    try:
        assert priors.prior_from_dict(Shrink(0.3).to_dict()) == Shrink(0.3)
        assert "shrink" not in priors.PRIORS
        with pytest.raises(ConfigError, match="unknown prior 'shrink'"):
            priors.PRIORS["shrink"]
    finally:
        priors.PRIOR_KINDS.unregister("shrink")
    with pytest.raises(ValueError, match="unknown prior type 'shrink'"):
        priors.prior_from_dict({"type": "shrink", "scale": 0.3})


def test_a_task_kind_is_one_record_whose_model_is_the_task_kinds_lookup():
    assert TASK_KIND_RECORDS["classification"].model is SequenceClassifier is TASK_KINDS["classification"]
    with pytest.raises(ConfigError, match="unknown task kind 'ranking'"):
        TASK_KINDS["ranking"]
