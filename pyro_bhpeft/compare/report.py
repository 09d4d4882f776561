"""The summary of saved cells: the table (mean and sd over seeds), paired tests against deterministic
LoRA, figures, and ``comparison.md`` / ``comparison.csv`` / ``significance.csv``."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pyro_bhpeft.analysis.tables import markdown_table

from ..io import write_text
from .cells import is_done, load_arrays, load_metrics, scale_rows
from .methods import METHODS
from .protocol import Protocol

__all__ = ["summarize", "results_table", "refresh_page", "compare_table"]

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
    table, rows = cell_table(cells)
    sig_md, sig_rows = significance(out, cells, seeds)
    figures = draw_figures(out, list(cells), seeds[0], protocol)
    _write_csv(out / "comparison.csv", rows)
    _write_csv(out / "significance.csv", sig_rows)
    shifted = bool(rows) and "ood_accuracy_mean" in rows[0]  # cell_table added the shift columns
    lines = [f"# Comparison of inference schemes on `{saved['task']}`", "", _setup(saved, seeds), "",
             table, "", NOTES + (" " + SHIFT_NOTE if shifted else ""), "", _fewer_seeds(cells, seeds),
             *_protocol_notes(list(cells), saved), "",
             "## Paired tests against deterministic LoRA (`lora`)", "", TESTS_NOTE, "", sig_md, "",
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


def load_cells(out: Path, methods: Sequence[str], seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """Each method's finished cells (methods with none are left out), with the ECE floor of its test
    predictions added."""
    from pyro_bhpeft.analysis import metrics

    cells = {}
    for m in methods:
        found = []
        for s in seeds:
            if is_done(out, m, s):
                cell = load_metrics(out, m, s)
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


def cell_table(cells: dict[str, list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table (mean ± sd over seeds per column) and its CSV rows (``{key}_mean``, ``{key}_sd``);
    the :data:`SHIFT_COLUMNS` only where some cell has them."""
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
    rows = []
    for method in cells:
        shared = [s for s in seeds if is_done(out, method, s) and is_done(out, baseline, s)]
        if method != baseline and shared:
            rows.append(_paired_row(out, method, baseline, shared))
    for name, _ in TESTED:
        for row, adjusted in zip(rows, stats.holm([r[f"p_{name}"] for r in rows])):
            row[f"p_{name}_holm"] = adjusted
    headers = ["method", "n"]
    for label in ("Δ accuracy (pts)", "Δ NLL", "Δ ECE (pts)"):
        headers += [f"{label} [95% CI]", "p (Holm)"]
    md_rows = []
    for r in rows:
        md_row = [r["method"], r["seeds"]]
        for n, d in TESTED:
            md_row += [f"{r[f'delta_{n}']:+.{d}f} [{r[f'{n}_low']:+.{d}f}, {r[f'{n}_high']:+.{d}f}]",
                       _p(r[f"p_{n}_holm"])]
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
    tests = {"accuracy": stats.sign_flip_test(100 * np.mean(correct, axis=0)),
             "nll": stats.sign_flip_test(np.mean(nll, axis=0)),
             "ece": stats.paired_bootstrap_ece(probs_a, probs_b, y)}
    row: dict[str, Any] = {"method": method, "seeds": len(shared)}
    for name, t in tests.items():
        row.update({f"delta_{name}": t.difference, f"{name}_low": t.low, f"{name}_high": t.high, f"p_{name}": t.p})
    return row


def _p(p: float) -> str:
    return "–" if math.isnan(p) else f"{p:.2g}"


def draw_figures(out: Path, methods: Sequence[str], seed: int, protocol: Protocol) -> list[str]:
    """Reliability, accuracy-coverage, confidence, OOD-uncertainty and per-site scale figures of seed
    ``seed``, as paths relative to ``out``. Scale figures: methods with ``has_scales``, learned
    posteriors first, then post-hoc ones, each in registry order."""
    from pyro_bhpeft.analysis import ScaleRow, plots

    figdir = out / "figures"
    figdir.mkdir(exist_ok=True)
    arrays = {m: load_arrays(out, m, seed) for m in methods if is_done(out, m, seed)}
    if not arrays:
        return []
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


# ---------------------------------------------------------------------------------------------------------
# Results pages: every table in README.md and docs/results/ sits between ``<!-- table: SPEC -->`` and
# ``<!-- /table -->`` and is regenerated here from the committed files (cells, JSON, benchmark tables), so a
# page cannot drift from its evidence (tests/test_docs.py; ``python -m pyro_bhpeft.compare.report --refresh``).
# ---------------------------------------------------------------------------------------------------------

TABLE_MARK = re.compile(r"<!-- table: (?P<spec>.+?) -->\n(?P<body>.*?)<!-- /table -->", re.S)

# name -> (header, metrics key or None for a derived column, multiplier, digits)
RESULT_COLUMNS: dict[str, tuple[str, str | None, float, int]] = {
    "accuracy": ("accuracy %", "accuracy", 100.0, 2), "nll": ("NLL", "nll", 1.0, 3),
    "brier": ("Brier", "brier", 1.0, 3), "ece": ("ECE %", "ece", 1.0, 2), "ece_floor": ("ECE floor %", None, 1.0, 2),
    "selective_auc": ("sel. AUC", "selective_auc", 1.0, 3), "ood_auroc": ("OOD AUROC", "ood_auroc", 1.0, 3),
    "ood_accuracy": ("OOD accuracy %", "ood_accuracy", 100.0, 2), "ood_nll": ("OOD NLL", "ood_nll", 1.0, 3),
    "ood_ece": ("OOD ECE %", "ood_ece", 1.0, 2), "train_seconds": ("train s", "train_seconds", 1.0, 0),
    "predict_seconds": ("predict s", "predict_seconds", 1.0, 0), "mi": ("MI (nats)", "mutual_information", 1.0, 4),
    "bops": ("bit operations / LoRA r=8 at 16 bits", "bops_ratio", 1.0, 4),
    "temperature": ("fitted temperature", "temperature", 1.0, -3),  # digits -3: three significant digits
    "first_label": ("first answer correct %", None, 100.0, 1),
    "confidence": ("mean confidence %", None, 100.0, 1), "first_answer": ("predicts the first answer %", None, 100.0, 1),
}


def _cell_arrays(folder: Path, method: str, seed: int, cache: dict) -> dict[str, np.ndarray]:
    key = (str(folder), method, seed)
    if key not in cache:
        cache[key] = load_arrays(folder, method, seed)
    return cache[key]


def _cell_value(folder: Path, method: str, seed: int, name: str, cache: dict) -> float | None:
    """One column's value for one cell (None where the cell does not have it)."""
    from pyro_bhpeft.analysis import metrics

    key = RESULT_COLUMNS[name][1]
    if key is not None:
        value = load_metrics(folder, method, seed).get(key)
        return None if value is None else float(value)
    probs = _cell_arrays(folder, method, seed, cache)["test_probs"]
    if name == "ece_floor":
        return metrics.ece_floor(probs).mean
    if name == "confidence":
        return float(probs.max(1).mean())
    if name == "first_answer":
        return float((probs.argmax(1) == 0).mean())
    if name == "first_label":
        return float((_cell_arrays(folder, method, seed, cache)["test_labels"] == 0).mean())
    raise ValueError(f"unknown column {name!r}")


def _seeds_of(folder: Path, method: str, seeds: Sequence[int] | None) -> list[int]:
    found = sorted(int(p.name.rsplit("-seed", 1)[1]) for p in (folder / "cells").glob(f"{method}-seed*")
                   if p.name.rsplit("-seed", 1)[0] == method and (p / "metrics.json").exists())
    return [s for s in found if seeds is None or s in seeds]


def _num(value: float, digits: int) -> str:
    """``digits`` decimals, or ``-digits`` significant digits when negative."""
    return f"{value:.{-digits}g}" if digits < 0 else f"{value:.{digits}f}"


def _fmt(values: Sequence[float], mult: float, digits: int) -> str:
    """``mean ± sd`` over several values, the value alone for one (never a fake ``± 0.00``), – for none."""
    mean, sd = mean_sd(values)
    if math.isnan(mean):
        return "–"
    return _num(mean * mult, digits) if len(values) == 1 else f"{_num(mean * mult, digits)} ± {_num(sd * mult, digits)}"


def _methods_in(folder: Path) -> list[str]:
    """The methods with cells in ``folder``, in the order of its committed ``comparison.csv``."""
    with open(folder / "comparison.csv") as f:
        return [row["method"] for row in csv.DictReader(f)]


TARGET = ("the calibration target: ECE at most half the baseline's at no more than 1.5 accuracy points below it; "
          "'on the mean' compares the means over the shared seeds, 'seed by seed' counts the seeds that meet both")


def compare_table(folder: Path, methods: Sequence[str] | None = None, columns: Sequence[str] = (
        "accuracy", "nll", "ece", "ece_floor"), seeds: Sequence[int] | None = None, baseline: str = "lora",
                  cache: dict | None = None) -> str:
    """Mean ± sd over each method's seeds (``n``: how many) of ``columns``, from the cells of ``folder``.

    Besides :data:`RESULT_COLUMNS`: ``ratio`` (mean ECE over the baseline's mean ECE on the same seeds),
    ``ratio_seeds`` (that ratio seed by seed), ``target`` (:data:`TARGET`, on the mean and seed by seed), ``halved`` (seeds whose ECE is at most half the baseline's),
    ``ece_below`` / ``nll_below`` (seeds below the baseline), ``dacc`` (mean accuracy minus the baseline's on
    the same seeds, points) and ``NAME_seeds`` (a column's values seed by seed)."""
    cache = {} if cache is None else cache
    methods = list(methods or _methods_in(folder))
    headers = ["method", "n"]
    for c in columns:
        base = c[:-6] if c.endswith("_seeds") and c != "ratio_seeds" else c
        headers.append({"ratio": f"ECE / {baseline}'s", "ratio_seeds": f"ECE / {baseline}'s, per seed",
                        "halved": f"seeds with ECE ≤ 0.5x {baseline}'s", "ece_below": f"seeds with ECE below {baseline}'s",
                        "nll_below": f"seeds with NLL below {baseline}'s",
                        "dacc": f"Δ accuracy vs {baseline} (pts)",
                        "target": "target met: on the mean; seed by seed"}.get(c) or
                       (RESULT_COLUMNS[base][0] + (", per seed" if base != c else "")))
    rows = []
    for m in methods:
        ss = _seeds_of(folder, m, seeds)
        if not ss:
            raise ValueError(f"{folder}: no cells of {m!r}")
        shared = [s for s in ss if s in _seeds_of(folder, baseline, seeds)]
        row: list[Any] = [m, len(ss)]
        for c in columns:
            if c in RESULT_COLUMNS:
                _, _, mult, digits = RESULT_COLUMNS[c]
                values = [v for v in (_cell_value(folder, m, s, c, cache) for s in ss) if v is not None]
                row.append(_fmt(values, mult, digits))
            elif c.endswith("_seeds") and c[:-6] in RESULT_COLUMNS:
                _, _, mult, digits = RESULT_COLUMNS[c[:-6]]
                per_seed = [_cell_value(folder, m, s, c[:-6], cache) for s in ss]
                row.append(" / ".join("–" if v is None else _num(v * mult, digits) for v in per_seed))
            else:
                ece = {s: _cell_value(folder, m, s, "ece", cache) for s in shared}
                ece0 = {s: _cell_value(folder, baseline, s, "ece", cache) for s in shared}
                acc = {s: _cell_value(folder, m, s, "accuracy", cache) for s in shared}
                acc0 = {s: _cell_value(folder, baseline, s, "accuracy", cache) for s in shared}
                if c == "ratio":
                    row.append(f"{statistics.fmean(ece.values()) / statistics.fmean(ece0.values()):.3f}"
                               if shared else "–")
                elif c == "ratio_seeds":
                    row.append("–" if m == baseline else " / ".join(f"{ece[s] / ece0[s]:.3f}" for s in shared) or "–")
                elif c == "target":  # one standard for every method: TARGET
                    mean_met = (statistics.fmean(ece.values()) <= 0.5 * statistics.fmean(ece0.values()) and
                                100 * (statistics.fmean(acc.values()) - statistics.fmean(acc0.values())) >= -1.5)
                    seeds_met = sum(ece[s] <= 0.5 * ece0[s] and 100 * (acc[s] - acc0[s]) >= -1.5 for s in shared)
                    row.append("–" if m == baseline else
                               f"{'yes' if mean_met else 'no'}; {seeds_met}/{len(shared)} seeds")
                elif c == "halved":
                    row.append("–" if m == baseline else f"{sum(ece[s] <= 0.5 * ece0[s] for s in shared)}/{len(shared)}")
                elif c in ("ece_below", "nll_below"):
                    key = c[:3]
                    below = sum(_cell_value(folder, m, s, key, cache) < _cell_value(folder, baseline, s, key, cache)
                                for s in shared)
                    row.append("–" if m == baseline else f"{below}/{len(shared)}")
                elif c == "dacc":
                    d = [_cell_value(folder, m, s, "accuracy", cache) - _cell_value(folder, baseline, s, "accuracy", cache)
                         for s in shared]
                    row.append("–" if m == baseline or not d else f"{100 * statistics.fmean(d):+.2f}")
                else:
                    raise ValueError(f"unknown column {c!r}")
        rows.append(row)
    return markdown_table(headers, rows)


def seed_table(folder: Path, methods: Sequence[str], columns: Sequence[str] = ("accuracy", "ece"),
               ratio: bool = True, cache: dict | None = None) -> str:
    """One row per seed (and a mean ± sd row): each column of each method, and the ECE ratio of the second
    method to the first (in the last row, the ratio of the mean ECEs)."""
    cache = {} if cache is None else cache
    seeds = [s for s in _seeds_of(folder, methods[0], None) if all(s in _seeds_of(folder, m, None) for m in methods)]
    headers = ["seed"] + [f"{m} {RESULT_COLUMNS[c][0]}" for c in columns for m in methods]
    headers += [f"ECE ratio {methods[1]} / {methods[0]}"] if ratio else []
    rows, ratios = [], []
    for s in seeds:
        row: list[Any] = [s]
        for c in columns:
            _, _, mult, digits = RESULT_COLUMNS[c]
            row += [f"{_cell_value(folder, m, s, c, cache) * mult:.{digits}f}" for m in methods]
        if ratio:
            ratios.append(_cell_value(folder, methods[1], s, "ece", cache) / _cell_value(folder, methods[0], s, "ece", cache))
            row.append(f"{ratios[-1]:.2f}")
        rows.append(row)
    last: list[Any] = ["mean ± sd"]
    for c in columns:
        _, _, mult, digits = RESULT_COLUMNS[c]
        last += [_fmt([_cell_value(folder, m, s, c, cache) for s in seeds], mult, digits) for m in methods]
    if ratio:  # the ratio of the mean ECEs, as compare_table's ``ratio``
        last.append(f"{statistics.fmean(_cell_value(folder, methods[1], s, 'ece', cache) for s in seeds) / statistics.fmean(_cell_value(folder, methods[0], s, 'ece', cache) for s in seeds):.2f}")
    return markdown_table(headers, rows + [last])


def tests_table(folder: Path, methods: Sequence[str] | None = None) -> str:
    """The paired tests against ``lora`` from the committed ``significance.csv`` (written by :func:`summarize`
    from the cells), for ``methods`` (all by default), and how many methods Holm's correction runs over."""
    with open(folder / "significance.csv") as f:
        found = list(csv.DictReader(f))
    chosen = [r for r in found if methods is None or r["method"] in methods]
    headers = ["method", "n"]
    for label in ("Δ accuracy (pts)", "Δ NLL", "Δ ECE (pts)"):
        headers += [f"{label} [95% CI]", "p (Holm)"]
    rows = []
    for r in chosen:
        row: list[Any] = [r["method"], r["seeds"]]
        for n, d in TESTED:
            row += [f"{float(r[f'delta_{n}']):+.{d}f} [{float(r[f'{n}_low']):+.{d}f}, {float(r[f'{n}_high']):+.{d}f}]",
                    _p(float(r[f"p_{n}_holm"]))]
        rows.append(row)
    return (markdown_table(headers, rows) + f"\n\nHolm's correction runs over the {len(found)} methods tested "
            "against `lora` in this comparison, per metric.")


def forgetting_table(path: Path) -> str:
    """The forgetting table from ``forgetting.json`` (as ``benchmarks/forgetting.py`` computes it), with the
    forgetting and the final NLL seed by seed."""
    data = json.loads(Path(path).read_text())
    headers = ["method", "n", "avg forgetting (acc pts)", "forgetting per seed", "final acc, round 1",
               "final acc, all rounds", "final NLL", "final NLL per seed", "final ECE %"]
    rows = []
    for method, runs in data["results"].items():
        forget = [100 * statistics.fmean(r[j][j]["accuracy"] - r[-1][j]["accuracy"] for j in range(len(r) - 1))
                  for r in runs]
        nll = [statistics.fmean(m["nll"] for m in r[-1]) for r in runs]
        rows.append([method, len(runs), _fmt(forget, 1, 2), " / ".join(f"{v:+.2f}" for v in forget),
                     _fmt([100 * r[-1][0]["accuracy"] for r in runs], 1, 2),
                     _fmt([100 * statistics.fmean(m["accuracy"] for m in r[-1]) for r in runs], 1, 2),
                     _fmt(nll, 1, 3), " / ".join(f"{v:.3f}" for v in nll),
                     _fmt([statistics.fmean(m["ece"] for m in r[-1]) for r in runs], 1, 2)])
    return markdown_table(headers, rows)


def _json_cells(folder: Path) -> dict[str, dict[int, dict[str, Any]]]:
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for p in sorted(Path(folder).glob("*-seed*.json")):
        name, seed = p.stem.rsplit("-seed", 1)
        cells.setdefault(name, {})[int(seed)] = json.loads(p.read_text())
    return cells


def regression_table(folder: Path, methods: Sequence[str]) -> str:
    """The regression benchmark's table from its cells (``docs/regression/cells``)."""
    cells = _json_cells(folder)
    headers = ["method", "n", "MSE", "Gaussian NLL", "90 % interval coverage %", "epistemic share of variance"]
    rows = [[m, len(cells[m]), _fmt([c["mse"] for c in cells[m].values()], 1, 3),
             _fmt([c["nll"] for c in cells[m].values()], 1, 3), _fmt([c["coverage90"] for c in cells[m].values()], 1, 1),
             f"{statistics.fmean(c['epistemic_share'] for c in cells[m].values()):.3f}"] for m in methods]
    return markdown_table(headers, rows)


def abmll_table(folder: Path, tasks: Sequence[str], methods: Sequence[str]) -> str:
    """ABMLL's table from its cells (``docs/abmll/cells``): accuracy, ECE and NLL per unseen task and method."""
    cells = _json_cells(folder)
    headers = ["unseen task", "method", "n", "accuracy %", "ECE %", "NLL", "ECE % per seed"]
    rows = []
    for t in tasks:
        for m in methods:
            found = [cells[f"{m}-{t}"][s] for s in sorted(cells[f"{m}-{t}"])]
            rows.append([t, m, len(found), _fmt([c["accuracy"] for c in found], 100, 2),
                         _fmt([c["ece"] for c in found], 1, 2), _fmt([c["nll"] for c in found], 1, 3),
                         " / ".join(f"{c['ece']:.2f}" for c in found)])
    return markdown_table(headers, rows)


def included_table(path: Path, index: int = 1) -> str:
    """The ``index``-th markdown table (from 1) of a committed file a benchmark wrote."""
    tables = re.findall(r"(?:^\|.*\|[ \t]*\n)+", Path(path).read_text(), re.M)
    if len(tables) < index:
        raise ValueError(f"{path} has {len(tables)} tables, not {index}")
    return tables[index - 1].rstrip("\n")


def results_table(spec: str, root: str | Path = ".", cache: dict | None = None) -> str:
    """The table a page's ``<!-- table: SPEC -->`` marker names, regenerated from the committed files under
    ``root``. SPEC is ``KIND PATH key=value ...``, comma lists for lists:

    - ``compare docs/compare/X methods=a,b columns=accuracy,nll,ratio seeds=0,1,2`` (:func:`compare_table`)
    - ``seeds docs/compare/X methods=lora,mean-field columns=accuracy,ece`` (:func:`seed_table`)
    - ``tests docs/compare/X methods=a,b`` (:func:`tests_table`)
    - ``forgetting docs/forgetting/forgetting.json``, ``regression docs/regression/cells methods=...``,
      ``abmll docs/abmll/cells tasks=... methods=...``
    - ``include FILE index=2``: a table a benchmark wrote (:func:`included_table`)
    """
    kind, target, *options = spec.split()
    opts = {k: v for k, v in (o.split("=", 1) for o in options)}
    lists = {k: [x for x in v.split(",") if x] for k, v in opts.items()}
    path = Path(root) / target
    if kind == "compare":
        return compare_table(path, lists.get("methods"), lists.get("columns", ("accuracy", "nll", "ece", "ece_floor")),
                             [int(s) for s in lists["seeds"]] if "seeds" in lists else None,
                             opts.get("baseline", "lora"), cache)
    if kind == "seeds":
        return seed_table(path, lists["methods"], lists.get("columns", ("accuracy", "ece")), cache=cache)
    if kind == "tests":
        return tests_table(path, lists.get("methods"))
    if kind == "forgetting":
        return forgetting_table(path)
    if kind == "regression":
        return regression_table(path, lists["methods"])
    if kind == "abmll":
        return abmll_table(path, lists["tasks"], lists["methods"])
    if kind == "include":
        return included_table(path, int(opts.get("index", 1)))
    raise ValueError(f"unknown table kind {kind!r} in {spec!r}")


def refresh_page(page: str | Path, root: str | Path = ".", write: bool = True) -> list[str]:
    """Regenerate every marked table of ``page``; the specs whose committed text differed (rewritten when
    ``write``)."""
    page = Path(page)
    text, cache, differ = page.read_text(), {}, []

    def redo(match: re.Match) -> str:
        body = results_table(match["spec"], root, cache) + "\n"
        if body != match["body"]:
            differ.append(match["spec"])
        return f"<!-- table: {match['spec']} -->\n{body}<!-- /table -->"

    new = TABLE_MARK.sub(redo, text)
    if write and new != text:
        write_text(page, new)
    return differ


if __name__ == "__main__":  # python -m pyro_bhpeft.compare.report --refresh README.md docs/results/*.md
    import sys

    pages = [a for a in sys.argv[1:] if a != "--refresh"]
    for p in pages:
        changed = refresh_page(p, write="--refresh" in sys.argv)
        print(f"{p}: {len(changed)} table(s) {'rewritten' if '--refresh' in sys.argv else 'differ'}"
              + "".join(f"\n  {c}" for c in changed))
