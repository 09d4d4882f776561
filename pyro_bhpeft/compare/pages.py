"""Results pages: every table in README.md and docs/results/ sits between ``<!-- table: SPEC -->`` and
``<!-- /table -->`` and is regenerated here from the committed files (cells, JSON, benchmark tables), so a page
cannot drift from its evidence (tests/test_docs.py).

    python -m pyro_bhpeft.compare.pages --refresh README.md docs/results/*.md     # after adding cells
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pyro_bhpeft.analysis.tables import markdown_table

from ..io import write_text
from .cells import done_seeds, load_arrays, load_metrics
from .report import mean_sd, p_text, tests_of

__all__ = ["TABLE_MARK", "results_table", "refresh_page", "compare_table", "seed_table", "tests_table"]

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
    # a regression's (the Gaussian NLL is ``nll``)
    "mse": ("MSE", "mse", 1.0, 4), "mae": ("MAE", "mae", 1.0, 4), "coverage90": ("90% coverage %", "coverage90", 100.0, 1),
    "z2": ("mean (y − mean)² / variance", None, 1.0, 2),  # 1 for a calibrated Gaussian; above: variance too small
    # the validation split's, as a selection among methods reads them (``validation.KEY`` in the cell's metrics)
    "val_accuracy": ("validation accuracy %", "validation.accuracy", 100.0, 2),
    "val_nll": ("validation NLL", "validation.nll", 1.0, 3),
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
        value: Any = load_metrics(folder, method, seed)
        for part in key.split("."):  # "validation.nll": a nested block's
            value = value.get(part) if isinstance(value, dict) else None
        return None if value is None else float(value)
    if name == "z2":
        arrays = _cell_arrays(folder, method, seed, cache)
        return float(np.mean((arrays["test_labels"] - arrays["test_mean"]) ** 2 / arrays["test_variance"]))
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
    return [s for s in done_seeds(folder, method) if seeds is None or s in seeds]


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
                        "mse_below": f"seeds with MSE below {baseline}'s", "mse_ratio": f"MSE / {baseline}'s",
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
                elif c == "mse_ratio":
                    mse = [(_cell_value(folder, m, s, "mse", cache), _cell_value(folder, baseline, s, "mse", cache))
                           for s in shared]
                    row.append(f"{statistics.fmean(a for a, _ in mse) / statistics.fmean(b for _, b in mse):.3f}"
                               if shared else "–")
                elif c in ("ece_below", "nll_below", "mse_below"):
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
    tested, labels = tests_of(bool(found) and "delta_squared_error" in found[0])  # a regression's columns
    headers = ["method", "n"]
    for label in labels:
        headers += [f"{label} [95% CI]", "p (Holm)"]
    rows = []
    for r in chosen:
        row: list[Any] = [r["method"], r["seeds"]]
        for n, d in tested:
            row += [f"{float(r[f'delta_{n}']):+.{d}f} [{float(r[f'{n}_low']):+.{d}f}, {float(r[f'{n}_high']):+.{d}f}]",
                    p_text(float(r[f"p_{n}_holm"]))]
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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pyro_bhpeft.compare.pages [--refresh] PAGE...``: say (or, with --refresh, rewrite) the tables
    of each page that differ from what the committed files give."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    refresh = "--refresh" in args
    for page in [a for a in args if a != "--refresh"]:
        changed = refresh_page(page, write=refresh)
        print(f"{page}: {len(changed)} table(s) {'rewritten' if refresh else 'differ'}"
              + "".join(f"\n  {c}" for c in changed))


if __name__ == "__main__":
    main()
