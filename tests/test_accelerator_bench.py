"""The accelerator benchmark runs end to end on the CPU at its tiny size (the GPU run uses the same code)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks" / "accelerator.py"


@pytest.fixture(scope="module")
def accelerator():
    spec = importlib.util.spec_from_file_location("accelerator_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_every_method_and_both_prediction_modes(accelerator, tmp_path):
    results = accelerator.main(["--sizes", "tiny", "--steps", "1", "--seq", "16", "--out", str(tmp_path / "acc")])
    rows = results["tiny"]
    assert set(accelerator.METHODS) <= set(rows)
    for method in accelerator.METHODS[1:]:
        assert rows[method]["step_ratio"] > 0
    assert rows["prediction"]["folded K=8"] > 0 and rows["prediction"]["looped K=8"] > 0
    saved = json.loads((tmp_path / "acc.json").read_text())
    assert saved["device"] == "cpu" and "BH-PEFT hybrid" in (tmp_path / "acc.md").read_text()
