"""Every plot is written as a real, non-blank PNG, atomically, and bad input fails before any file appears."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass

import matplotlib.figure
import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pyro_bhpeft.analysis import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _results() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(2), size=200)
    labels = (rng.random(200) > p[:, 0]).astype(int)  # calibrated by construction
    sharp = p ** 3 / (p ** 3).sum(1, keepdims=True)  # overconfident
    return {"deterministic": (sharp, labels), "bayes": (torch.tensor(p), torch.tensor(labels))}


@dataclass
class _Row:  # the shape of analysis.ScaleRow
    site: str
    posterior_scale: float
    prior_scale: float


CASES = {
    "reliability": lambda out: plots.reliability_diagram(_results(), out),
    "reliability-10-bins": lambda out: plots.reliability_diagram({"one": _results()["bayes"]}, out, n_bins=10),
    "confidence": lambda out: plots.confidence_histogram(_results(), out),
    "coverage": lambda out: plots.accuracy_coverage(_results(), out),
    "ood": lambda out: plots.uncertainty_histogram(
        {"a": np.random.rand(50), "b": np.random.rand(30)}, {"a": np.random.rand(40) + 0.5, "b": np.ones(5)}, out),
    "elbo": lambda out: plots.elbo_trace({"a": list(np.linspace(500, 1, 300)), "b": [3.0, 2.0], "c": []}, out),
    "forest": lambda out: plots.scale_forest([("layer.0.lora_A", 0.01, 1.0), ("head.weight", 0.3, 1.0),
                                              _Row("layer.1.lora_B", 2.0, 1.0)], out),
    "rounds": lambda out: plots.accuracy_over_rounds({"a": [0.9, 0.8, 0.7], "b": [0.9, 0.88]}, out),
    "rounds-errors": lambda out: plots.accuracy_over_rounds({"a": [0.9, 0.8, 0.7], "b": [0.9, 0.88]}, out,
                                                            errors={"a": [0.02, 0.05, 0.1]}),
}


def test_reliability_prints_each_bins_count():
    """Each non-empty bin's number of examples is written above its bar."""
    fig = Figure()
    ax = fig.add_subplot()
    probs, labels = _results()["bayes"]
    plots.draw_reliability(ax, probs, labels, 15)
    from pyro_bhpeft.analysis import metrics as m

    counts = m.reliability_bins(probs, labels, 15).counts
    assert sorted(int(t.get_text().removeprefix("n=")) for t in ax.texts) == sorted(int(c) for c in counts if c > 0)


def _assert_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.std() > 0.01  # not a blank canvas


@pytest.fixture
def drawn(monkeypatch):
    """(weak reference, size in inches) of every matplotlib Figure made during the test, pyplot's included."""
    made, init = [], Figure.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append((weakref.ref(self), tuple(self.get_size_inches())))

    monkeypatch.setattr(Figure, "__init__", tracked)
    return made


def _assert_released(drawn):
    """No figure outlives the call: nothing (pyplot's figure list, a cache) keeps one alive."""
    gc.collect()
    assert [ref() for ref, _ in drawn if ref() is not None] == []


@pytest.mark.parametrize("kind", list(CASES))
def test_plot_is_a_non_blank_png_and_no_temp_files_remain(kind, tmp_path, drawn):
    out = CASES[kind](tmp_path / f"{kind}.png")
    assert out == tmp_path / f"{kind}.png"
    _assert_png(out)
    assert [p.name for p in tmp_path.iterdir()] == [f"{kind}.png"]
    assert len(drawn) == 1  # one figure of its own per plot
    width, height = drawn[0][1]
    assert mpimg.imread(out).shape[:2] == (round(height * plots.DPI), round(width * plots.DPI))  # that figure
    _assert_released(drawn)


def test_folders_are_created_and_an_old_figure_is_replaced(tmp_path):
    out = tmp_path / "figures" / "nested" / "rounds.png"
    out.parent.mkdir(parents=True)
    out.write_bytes(b"old")
    assert plots.accuracy_over_rounds({"a": [0.5, 0.6]}, str(out), xlabel="update") == out
    _assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["rounds.png"]


def test_save_writes_a_finished_figure_atomically_and_checks_the_name(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    out = plots.save(fig, tmp_path / "line.png")
    _assert_png(out)
    assert [p.name for p in tmp_path.iterdir()] == ["line.png"]
    with pytest.raises(ValueError, match=r"\.png"):
        plots.save(fig, tmp_path / "line.jpg")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, drawn):
    out = tmp_path / "reliability.png"
    out.write_bytes(b"old")

    def broken_savefig(self, fname, **kwargs):
        with open(fname, "wb") as partial:
            partial.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plots.reliability_diagram(_results(), out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["reliability.png"]
    assert len(drawn) == 1
    _assert_released(drawn)


def test_draw_functions_use_the_given_axes(tmp_path):
    results = _results()
    fig = Figure(figsize=(12, 6))
    axes = fig.subplots(2, 4)
    plots.draw_reliability(axes[0, 0], *results["bayes"], title="bayes")
    plots.draw_confidence_histogram(axes[0, 1], results)
    plots.draw_accuracy_coverage(axes[0, 2], results)
    plots.draw_uncertainty_histogram(axes[0, 3], np.random.rand(20), np.random.rand(20) + 1)
    plots.draw_elbo_trace(axes[1, 0], {"a": [3.0, 2.0, 1.5]})
    plots.draw_scale_forest(axes[1, 1], [("a", 0.1, 1.0)])
    plots.draw_accuracy_over_rounds(axes[1, 2], {"a": [0.9, 0.8]})
    assert "ECE" in axes[0, 0].get_title() and "AUROC" in axes[0, 3].get_title()
    assert "selective AUC" in axes[0, 2].get_legend().get_texts()[0].get_text()
    assert axes[1, 1].get_xscale() == "log"
    assert all(ax.has_data() for ax in axes.flat[:7])
    fig.savefig(tmp_path / "grid.png")
    _assert_png(tmp_path / "grid.png")


def test_methods_keep_their_colour_across_figures():
    results = _results()
    left, right = Figure().subplots(1, 2)
    plots.draw_accuracy_coverage(left, results)
    plots.draw_accuracy_over_rounds(right, {name: [0.5, 0.6] for name in results})
    colours = [[line.get_color() for line in ax.get_lines()] for ax in (left, right)]
    assert colours[0] == colours[1] == [plots.COLORS[0], plots.COLORS[1]]


BAD = {
    "not a png": (lambda out: plots.accuracy_over_rounds({"a": [0.5]}, out.with_suffix(".pdf")), r"\.png"),
    "no methods": (lambda out: plots.reliability_diagram({}, out), "results is empty"),
    "different methods": (lambda out: plots.uncertainty_histogram({"a": [1.0]}, {"b": [2.0]}, out),
                          "same methods"),
    "no rows": (lambda out: plots.scale_forest([], out), "rows is empty"),
    "zero scale": (lambda out: plots.scale_forest([("a", 0.0, 1.0)], out), "> 0 for a log axis"),
    "bad probs": (lambda out: plots.confidence_histogram({"a": (np.ones(3), np.zeros(3))}, out), "probs has shape"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_and_writes_nothing(case, tmp_path, drawn):
    call, message = BAD[case]
    with pytest.raises(ValueError, match=message):
        call(tmp_path / "figure.png")
    assert list(tmp_path.iterdir()) == []
    _assert_released(drawn)


def test_many_methods_wrap_into_rows_of_four(tmp_path):
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    results = {f"m{i}": (rng.dirichlet([1, 1], 50), rng.integers(0, 2, 50)) for i in range(6)}
    out = plots.reliability_diagram(results, tmp_path / "six.png")
    height, width = imread(out).shape[:2]
    assert width / height == pytest.approx(4 / 2, rel=0.02)  # 4 columns, 2 rows (2 panels left empty)
