"""The comparison registry holds the methods a user would pick; experiment-only variants come with the
benchmark module that registers them; the default methods are those the installed extras allow; one
cached-fit helper keeps every shared fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_bhpeft.compare import METHODS, Method, Scored
from pyro_bhpeft.compare.methods import available_methods, cached_fit, register_method

ROOT = Path(__file__).resolve().parent.parent
LAB = ("blob-mean", "ivon-ess-n", "lora-gates-nonoise")


def _python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_experiment_variants_are_registered_only_by_the_lab_module():
    code = ("import sys; from pyro_bhpeft.compare import METHODS; print(sorted(set({lab}) & set(METHODS)));"
            "sys.path.insert(0, 'benchmarks'); import lab_methods; names = METHODS.names();"
            "print([names[names.index(n) - 1] for n in {lab}])").format(lab=LAB)
    before, after = _python(code).splitlines()
    assert before == "[]"
    assert after == "['bayes-lora-fs-mean', 'ivon', 'lora-gates']"  # each right after the method it varies


def test_default_methods_are_what_the_installed_extras_allow(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ivon" else real(name, *a))
    runnable, skipped = available_methods()
    assert "ivon" not in runnable and skipped["ivon"] == "needs ivon (pip install peft ivon-opt)"
    assert "lora" in runnable and "peft-lora" in runnable and not set(LAB) & (set(runnable) | set(skipped))
    assert available_methods(["lora", "ivon"]) == (("lora",), {"ivon": skipped["ivon"]})


def test_a_method_registered_from_outside_is_not_a_default_but_can_be_named():
    register_method("mine", Method("a user's method", lambda bench, seed: Scored({}, 0.0, 0.0, 0)))
    try:
        assert "mine" not in available_methods()[0]
        assert available_methods(["mine"]) == (("mine",), {})
    finally:
        METHODS.unregister("mine")


def test_cached_fit_builds_once_then_loads(tmp_path):
    built = []

    def build():
        built.append(1)
        return {"value": len(built)}

    def write(value, stage):
        (stage / "fit.json").write_text(json.dumps(value))

    def load(path):
        return json.loads((path / "fit.json").read_text())

    path = tmp_path / "fits" / "x-seed0"
    assert cached_fit(path, "fit.json", build, write, load) == {"value": 1}
    assert cached_fit(path, "fit.json", build, write, load) == {"value": 1} and built == [1]


def test_a_failed_build_leaves_no_cache(tmp_path):
    def write(value, stage):
        raise RuntimeError("disk full")

    path = tmp_path / "fits" / "x-seed0"
    with pytest.raises(RuntimeError, match="disk full"):
        cached_fit(path, "fit.json", lambda: 1, write, lambda p: 2)
    assert not (path / "fit.json").exists()


def test_compare_without_methods_runs_the_available_ones_and_says_what_it_skipped(monkeypatch, tmp_path, capsys):
    import importlib.util

    import pyro_bhpeft.compare as compare
    from pyro_bhpeft.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ivon" else real(name, *a))
    asked = {}
    monkeypatch.setattr(compare, "run_compare", lambda protocol, out, methods, **kw: asked.update(methods=methods) or out)
    assert main(["compare", "--task", "sentiment", "--out", str(tmp_path / "cmp")]) in (0, None)
    assert "compare: skipping ivon: needs ivon" in capsys.readouterr().err
    assert "ivon" not in asked["methods"] and "lora" in asked["methods"]
