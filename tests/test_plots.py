"""Every plot is written as a real, non-blank PNG, atomically."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from pyro_bhpeft.analysis import plots


def _results():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(2), size=200)
    return {"deterministic": (p, rng.integers(0, 2, 200)), "bayes": (0.5 * p + 0.25, rng.integers(0, 2, 200))}


CASES = {
    "reliability": lambda out: plots.reliability_diagram(_results(), out),
    "confidence": lambda out: plots.confidence_histogram(_results(), out),
    "coverage": lambda out: plots.accuracy_coverage(_results(), out),
    "ood": lambda out: plots.uncertainty_histogram({"a": np.random.rand(50)}, {"a": np.random.rand(40) + 0.5}, out),
    "elbo": lambda out: plots.elbo_trace({"a": list(np.linspace(5, 1, 100)), "b": [3.0, 2.0]}, out),
    "forest": lambda out: plots.scale_forest([("layer.0.lora_A", 0.01, 1.0), ("head.weight", 0.3, 1.0)], out),
    "rounds": lambda out: plots.accuracy_over_rounds({"a": [0.9, 0.8, 0.7], "b": [0.9, 0.88, 0.86]}, out),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_plot_is_a_non_blank_png_and_no_temp_files_remain(kind, tmp_path):
    out = CASES[kind](tmp_path / f"{kind}.png")
    assert out == tmp_path / f"{kind}.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert mpimg.imread(out).std() > 0.01
    assert [p.name for p in tmp_path.iterdir()] == [f"{kind}.png"]
