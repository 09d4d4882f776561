"""The summary of saved cells: the table (mean and sd over seeds), paired tests against deterministic
LoRA, figures, and ``comparison.md`` / ``comparison.csv`` / ``significance.csv``."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pyro_bhpeft.analysis.tables import markdown_table

from ..io import write_text
from .cells import is_done, load_arrays, load_metrics, scale_rows
from .methods import METHODS
from .protocol import Protocol

__all__ = ["summarize", "significance", "load_cells", "mean_sd", "p_text"]

# (column, metrics key, multiplier, digits, with "± sd")
COLUMNS = (("accuracy %", "accuracy", 100.0, 2, True), ("NLL", "nll", 1.0, 3, True), ("Brier", "brier", 1.0, 3, True),
           ("ECE %", "ece", 1.0, 2, True), ("ECE floor %", "ece_floor", 1.0, 2, True),
           ("sel. AUC", "selective_auc", 1.0, 3, True), ("OOD AUROC", "ood_auroc", 1.0, 3, True),
           ("train s", "train_seconds", 1.0, 0, True), ("predict s", "predict_seconds", 1.0, 1, True),
           ("peak MB", "peak_mb", 1.0, 0, True), ("params", "trainable", 1.0, 0, False))
# Shown only where a cell has them: the OOD task answers in the test task's label space (BLoB's shift check)
SHIFT_COLUMNS = (("OOD acc %", "ood_accuracy", 100.0, 2, True), ("OOD NLL", "ood_nll", 1.0, 3, True),
                 ("OOD ECE %", "ood_ece", 1.0, 2, True))
SHIFT_NOTE = ("OOD acc / NLL / ECE: on the OOD task's own labels, which share the test task's answers (a "
              "distribution shift, as BLoB's OpenBookQA-to-ARC check).")
TESTED = (("accuracy", 2), ("nll", 3), ("ece", 2))  # paired-tested metrics and their digits
# A regression's table and tests (its cells hold ``mse``; ``nll`` is the Gaussian predictive's)
REGRESSION_COLUMNS = (("MSE", "mse", 1.0, 4, True), ("MAE", "mae", 1.0, 4, True),
                      ("Gaussian NLL", "nll", 1.0, 3, True), ("90% coverage %", "coverage90", 100.0, 1, True),
                      ("epistemic var", "epistemic_variance", 1.0, 4, True), *COLUMNS[-4:])
REGRESSION_TESTED = (("squared_error", 4), ("nll", 3))
REGRESSION_NOTES = ("Gaussian NLL: of the predictive N(mean, variance), variance = noise + epistemic (the variance of "
                    "the draws' means). 90% coverage: the fraction of test labels inside the central 90 % "
                    "interval (90 is calibrated). epistemic var: its mean over the test examples. `temperature` on a "
                    "regression is variance scaling: `lora`'s predictive variance times one factor fitted by Gaussian "
                    "NLL on the validation split. train s includes post-hoc steps (that factor) and every ensemble "
                    "member.")
REGRESSION_TESTS_NOTE = ("Method minus `lora` on the same test examples, averaged over the shared seeds: squared error "
                         "(its mean is the MSE) and Gaussian NLL per example, sign-flip test of the mean difference, "
                         "95% bootstrap intervals, p-values Holm-corrected across the methods, per metric. Conditional "
                         "on the fitted models (test-sample noise only).")
NOTES = ("ECE: 15 equal-width bins, in %. ECE floor: the ECE a perfectly calibrated model with the same "
         "confidences would show on these examples (finite-sample noise). sel. AUC: area under accuracy vs coverage "
         "(most certain first, by predictive entropy). OOD AUROC: predictive entropy separating OOD from test "
         "examples. train s includes post-hoc steps (Laplace GGN, temperature fit) and every ensemble member; peak MB "
         "is the process's peak resident memory during training.")
TESTS_NOTE = ("Method minus `lora` on the same test examples, averaged over the shared seeds. Accuracy and NLL: "
              "sign-flip test of the mean per-example difference; ECE: paired bootstrap over examples (2,000 draws); "
              "95% bootstrap intervals; p-values Holm-corrected across the methods, per metric. The tests are "
              "conditional on the fitted models (test-sample noise only); the ± over seeds above shows the "
              "training-seed spread.")


def summarize(out: str | Path, methods: Sequence[str], seeds: Sequence[int]) -> Path:
    """Write ``comparison.md``, ``comparison.csv``, ``significance.csv`` and ``figures/`` from the saved
    cells of ``methods`` x ``seeds`` in ``out`` (missing cells are left out). Returns ``comparison.md``."""
    out = Path(out)
    protocol = Protocol.read(out)
    saved = protocol.to_dict()
    cells = load_cells(out, methods, seeds)
    regression = _is_regression(cells)
    table, rows = cell_table(cells, REGRESSION_COLUMNS if regression else None)
    sig_md, sig_rows = significance(out, cells, seeds)
    figures = draw_figures(out, list(cells), seeds[0], protocol)
    _write_csv(out / "comparison.csv", rows)
    _write_csv(out / "significance.csv", sig_rows)
    shifted = bool(rows) and "ood_accuracy_mean" in rows[0]  # cell_table added the shift columns
    lines = [f"# Comparison of inference schemes on `{saved['task']}`", "", _setup(saved, seeds), "",
             table, "", REGRESSION_NOTES if regression else NOTES + (" " + SHIFT_NOTE if shifted else ""), "",
             _fewer_seeds(cells, seeds), *_protocol_notes(list(cells), saved), "",
             "## Paired tests against deterministic LoRA (`lora`)", "",
             REGRESSION_TESTS_NOTE if regression else TESTS_NOTE, "", sig_md, "",
             "## Methods", ""]
    lines += [f"- `{m}`: {METHODS[m].description}" for m in cells]
    lines += ["", f"## Figures (seed {seeds[0]})", ""] + [f"![{f}]({f})" for f in figures]
    return write_text(out / "comparison.md", "\n".join(lines) + "\n")


# Where a method departs from the comparison's protocol by design (its definition or its authors' code)
PROTOCOL_NOTES = {
    "ensemble": "`{ensemble_size}` deterministic LoRAs (seeds s, s+1000, ...), {ensemble_size}x the training",
    "temperature": "`lora`'s fit plus one temperature fitted on the validation split (bounded at T <= 100 since "
                   "the SmolLM2 comparisons; earlier cells may hold larger T)",
    "laplace": "post-hoc diagonal-GGN Laplace around `lora`'s fit ({laplace_examples} training examples)",
    "laplace-glm": "post-hoc diagonal-GGN Laplace around `lora`'s fit, linearised predictive",
    "laplace-kfac": "laplace-torch around the peft library's LoRA; 100,000 logit draws, not {samples} samples",
    "laplace-kfac-probit": "laplace-torch around the peft library's LoRA; probit predictive, no samples",
    "laplace-diag": "laplace-torch around the peft library's LoRA; 100,000 logit draws, not {samples} samples",
    "ivon": "the peft library's LoRA trained by ivon-opt at its authors' settings (lr 0.03), not Adam at lr {lr}",
    "ivon-ess-n": "the peft library's LoRA trained by ivon-opt with ess = n (lr 0.03), not Adam at lr {lr}",
    "blob": "predicts with 10 posterior samples (its authors' number)",
    "tfb": "post-hoc around `lora`'s fit; predicts with 10 posterior samples (its authors' number)",
    "lora-llla": "post-hoc last-layer Laplace around `lora`'s fit (all training examples); closed form, no samples",
    "mean-field-top2": "the lower blocks' PEFT weights are point estimates; the {samples} samples share their trunk",
}


def _protocol_notes(methods: Sequence[str], protocol: dict[str, Any]) -> list[str]:
    """One line per method here that departs from the protocol by design (:data:`PROTOCOL_NOTES`)."""
    notes = []
    for m in methods:
        note = PROTOCOL_NOTES.get(m)
        if note is None:
            continue
        if m in ("blob", "tfb") and protocol.get("samples") == 10:
            note = note.replace("predicts with 10 posterior samples (its authors' number)",
                                "10 posterior samples, as the protocol")
        notes.append(f"- `{m}`: " + note.format(**protocol))
    return ["", "Deliberate differences from the protocol:", "", *notes] if notes else []


def _fewer_seeds(cells: dict[str, list[dict[str, Any]]], seeds: Sequence[int]) -> str:
    """A sentence naming the rows over fewer seeds than the comparison's (``n`` column), or none."""
    fewer = [f"`{m}` ({len(found)})" for m, found in cells.items() if len(found) < len(seeds)]
    return (f"n: the seeds a row is over. Over fewer than the comparison's {len(seeds)}: {', '.join(fewer)}; a "
            "row over one seed shows its value alone." if fewer else
            f"n: the seeds a row is over (every row here is over all {len(seeds)}).")


def _setup(p: dict[str, Any], seeds: Sequence[int]) -> str:
    epochs = f"{p['epochs']} epoch{'s' if p['epochs'] != 1 else ''}"
    steps = f" (at most {p['max_steps']} steps)" if p["max_steps"] else ""
    ood = f"`{p['ood_task']}` test" if p["ood_task"] else "none"
    return (f"Backbone `{p['backbone']}`; {p['train_size']} training examples drawn at random (subset seed "
            f"{p.get('subset_seed', 0)}), {epochs}{steps}, batch {p['batch_size']}, Adam lr {p['lr']}, "
            f"{p['max_length']} tokens; {p['samples']} posterior samples; test: {p['eval_size']} random test "
            f"examples; OOD: {ood}. Seeds {', '.join(map(str, seeds))}; mean ± sd over seeds.")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buffer.getvalue())


def _is_regression(cells: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether the cells score a regression (their metrics hold ``mse``)."""
    return any("mse" in cell for found in cells.values() for cell in found)


def load_cells(out: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Each method's finished cells (methods with none are left out), with the ECE floor of its test
    predictions added (classification)."""
    from pyro_bhpeft.analysis import metrics

    cells = {}
    for m in methods:
        found = []
        for s in seeds:
            if is_done(out, m, s):
                cell = load_metrics(out, m, s)
                if "mse" not in cell:
                    cell["ece_floor"] = metrics.ece_floor(load_arrays(out, m, s)["test_probs"]).mean
                found.append(cell)
        if found:
            cells[m] = found
    return cells


def mean_sd(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation of the values that are not None or NaN (sd 0 for one value,
    both NaN for none)."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell_table(cells: dict[str, list[dict[str, Any]]], columns: Sequence[tuple] | None = None
               ) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table (mean ± sd over seeds per column) and its CSV rows (``{key}_mean``, ``{key}_sd``):
    ``columns`` (default :data:`COLUMNS`, with the :data:`SHIFT_COLUMNS` only where some cell has them)."""
    if columns is None:
        shift = [c for c in SHIFT_COLUMNS if any(c[1] in cell for found in cells.values() for cell in found)]
        at = [c[1] for c in COLUMNS].index("ood_auroc") + 1
        columns = (*COLUMNS[:at], *shift, *COLUMNS[at:])
    md_rows, rows = [], []
    for method, found in cells.items():
        row: dict[str, Any] = {"method": method, "seeds": len(found)}
        md_row = [method, len(found)]
        for _, key, mult, digits, spread in columns:
            values = [c.get(key) for c in found]
            mean, sd = mean_sd(values)
            row[f"{key}_mean"], row[f"{key}_sd"] = mean * mult, sd * mult
            several = sum(v is not None and not (isinstance(v, float) and math.isnan(v)) for v in values) > 1
            md_row.append("–" if math.isnan(mean) else f"{mean * mult:.{digits}f} ± {sd * mult:.{digits}f}"
                          if spread and several else f"{mean * mult:,.{digits}f}" if not spread
                          else f"{mean * mult:.{digits}f}")  # one seed: its value, no "± 0.00"
        md_rows.append(md_row)
        rows.append(row)
    return markdown_table(["method", "n", *(c[0] for c in columns)], md_rows), rows


def tests_of(regression: bool) -> tuple[tuple[tuple[str, int], ...], tuple[str, ...]]:
    """The paired-tested metrics, ``(name, digits)``, and their column labels: a regression's or a classifier's."""
    if regression:
        return REGRESSION_TESTED, ("Δ squared error", "Δ Gaussian NLL")
    return TESTED, ("Δ accuracy (pts)", "Δ NLL", "Δ ECE (pts)")


def significance(out: Path, cells: dict[str, list[dict[str, Any]]], seeds: Sequence[int],
                 baseline: str = "lora") -> tuple[str, list[dict[str, Any]]]:
    """Paired tests of each method against ``baseline`` on the same test examples and seeds.

    Accuracy and NLL: per-example differences averaged over the seeds both methods have, sign-flip test
    of their mean. ECE: paired bootstrap over examples of the seed-averaged ECE difference. Holm's
    correction across the methods, per metric. Conditional on the fitted models (see ``analysis.stats``).
    """
    from pyro_bhpeft.analysis import stats

    if baseline not in cells:
        return f"(no {baseline} cells: no paired tests)", []
    regression = _is_regression(cells)
    tested, labels = tests_of(regression)
    paired = _paired_regression_row if regression else _paired_row
    rows = []
    for method in cells:
        shared = [s for s in seeds if is_done(out, method, s) and is_done(out, baseline, s)]
        if method != baseline and shared:
            rows.append(paired(out, method, baseline, shared))
    for name, _ in tested:
        for row, adjusted in zip(rows, stats.holm([r[f"p_{name}"] for r in rows])):
            row[f"p_{name}_holm"] = adjusted
    headers = ["method", "n"]
    for label in labels:
        headers += [f"{label} [95% CI]", "p (Holm)"]
    md_rows = []
    for r in rows:
        md_row = [r["method"], r["seeds"]]
        for n, d in tested:
            md_row += [f"{r[f'delta_{n}']:+.{d}f} [{r[f'{n}_low']:+.{d}f}, {r[f'{n}_high']:+.{d}f}]",
                       p_text(r[f"p_{n}_holm"])]
        md_rows.append(md_row)
    return markdown_table(headers, md_rows), rows


def _paired_row(out: Path, method: str, baseline: str, shared: Sequence[int]) -> dict[str, Any]:
    from pyro_bhpeft.analysis import stats

    correct, nll, probs_a, probs_b = [], [], [], []
    for s in shared:
        a, b = load_arrays(out, method, s), load_arrays(out, baseline, s)
        y = a["test_labels"].astype(int)
        pa, pb = a["test_probs"], b["test_probs"]
        idx = np.arange(len(y))
        correct.append((pa.argmax(1) == y).astype(float) - (pb.argmax(1) == y).astype(float))
        nll.append(-np.log(np.clip(pa[idx, y], 1e-12, None)) + np.log(np.clip(pb[idx, y], 1e-12, None)))
        probs_a.append(pa)
        probs_b.append(pb)
    return _test_row(method, len(shared), {"accuracy": stats.sign_flip_test(100 * np.mean(correct, axis=0)),
                                           "nll": stats.sign_flip_test(np.mean(nll, axis=0)),
                                           "ece": stats.paired_bootstrap_ece(probs_a, probs_b, y)})


def _paired_regression_row(out: Path, method: str, baseline: str, shared: Sequence[int]) -> dict[str, Any]:
    """Per-example squared-error and Gaussian-NLL differences against ``baseline``, averaged over ``shared``
    seeds, each sign-flip tested."""
    from pyro_bhpeft.analysis import stats

    def per_example(a: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        y, mean, var = a["test_labels"], a["test_mean"], a["test_variance"]
        return (mean - y) ** 2, 0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var)

    squared, nll = [], []
    for s in shared:
        (se_a, nll_a), (se_b, nll_b) = per_example(load_arrays(out, method, s)), per_example(load_arrays(out, baseline, s))
        squared.append(se_a - se_b)
        nll.append(nll_a - nll_b)
    return _test_row(method, len(shared), {"squared_error": stats.sign_flip_test(np.mean(squared, axis=0)),
                                           "nll": stats.sign_flip_test(np.mean(nll, axis=0))})


def _test_row(method: str, seeds: int, tests: dict[str, Any]) -> dict[str, Any]:
    """One significance row: each test's difference, interval and p-value under its metric's name."""
    row: dict[str, Any] = {"method": method, "seeds": seeds}
    for name, t in tests.items():
        row.update({f"delta_{name}": t.difference, f"{name}_low": t.low, f"{name}_high": t.high, f"p_{name}": t.p})
    return row


def p_text(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def draw_figures(out: Path, methods: Sequence[str], seed: int, protocol: Protocol) -> list[str]:
    """Reliability, accuracy-coverage, confidence, OOD-uncertainty (a regression: interval coverage) and
    per-site scale figures of seed ``seed``, as paths relative to ``out``. Scale figures: methods with ``has_scales``, learned
    posteriors first, then post-hoc ones, each in registry order."""
    from pyro_bhpeft.analysis import ScaleRow, plots

    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    arrays = {m: load_arrays(out, m, seed) for m in methods if is_done(out, m, seed)}
    if not arrays:
        return []
    if any("test_mean" in a for a in arrays.values()):  # a regression: how well its intervals cover
        written = [plots.interval_coverage({m: (a["test_mean"], a["test_variance"], a["test_labels"])
                                            for m, a in arrays.items()}, figdir / "interval-coverage.png")]
    else:
        test = {m: (a["test_probs"], a["test_labels"]) for m, a in arrays.items()}
        written = [plots.reliability_diagram(test, figdir / "reliability.png"),
                   plots.accuracy_coverage(test, figdir / "accuracy-coverage.png"),
                   plots.confidence_histogram(test, figdir / "confidence.png")]
    with_ood = {m: a for m, a in arrays.items() if "ood_entropy" in a}
    if with_ood:
        written.append(plots.uncertainty_histogram({m: a["test_entropy"] for m, a in with_ood.items()},
                                                   {m: a["ood_entropy"] for m, a in with_ood.items()},
                                                   figdir / "ood-uncertainty.png"))
    scaled = [m for m, entry in METHODS.items() if entry.has_scales and m in arrays]
    for method in sorted(scaled, key=lambda m: METHODS[m].post_hoc is not None):
        rows, figure = scale_rows(out, method, seed, protocol), figdir / f"scales-{method}.png"
        if rows:
            written.append(plots.scale_forest([ScaleRow(**row) for row in rows], figure))
        elif figure.exists():  # a cell saved before scales.json: its figure was drawn from a fit since removed
            written.append(figure)
    return [str(Path(p).relative_to(out)) for p in written]


if __name__ == "__main__":  # the results pages' refresh lives in pages.py; this entry point is kept
    from pyro_bhpeft.compare.pages import main

    main()
