"""The default-recipe selection rule of docs/suite/README.md, applied to the suite's committed cells.

Written before any cell of the suite ran. On validation metrics only (each cell's ``validation`` block): keep the
methods within 1 accuracy point of LoRA on every classification task; among them the lowest validation NLL
averaged over the tasks (Gaussian NLL on regression) wins; ties within 0.001 go to the lower cost (training plus
prediction seconds). Writes ``selection.md`` in the suite folder.

    python benchmarks/suite_select.py docs/suite
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

TOLERANCE_POINTS, TIE_NLL = 1.0, 0.001
NOT_ELIGIBLE = {"temperature": "fitted on the validation split the rule reads (in-sample)"}


def cells(task: Path) -> dict[str, list[dict]]:
    """Method -> the metrics of its seeds' cells (those that record validation metrics)."""
    out: dict[str, list[dict]] = defaultdict(list)
    for file in sorted(task.glob("cells/*/metrics.json")):
        record = json.loads(file.read_text())
        if "validation" in record:
            out[record.get("method") or file.parent.name.rsplit("-seed", 1)[0]].append(record)
    return out


def select(suite: Path) -> tuple[str | None, list[str]]:
    """The winner (None if no method qualifies) and the reasoning, one line per method."""
    tasks = {p.name: cells(p) for p in sorted(suite.iterdir()) if (p / "protocol.json").is_file()}
    lines, scores = [], {}
    methods = set.intersection(*(set(t) for t in tasks.values())) if tasks else set()
    for method in sorted(methods):
        ok, nlls, cost = True, [], 0.0
        for name, by_method in tasks.items():
            val = [c["validation"] for c in by_method[method]]
            lora = [c["validation"] for c in by_method.get("lora", [])]
            if "accuracy" in val[0] and lora:
                gap = 100 * (np.mean([v["accuracy"] for v in val]) - np.mean([v["accuracy"] for v in lora]))
                ok &= gap >= -TOLERANCE_POINTS
            nlls.append(np.mean([v.get("nll", v.get("gaussian_nll", np.nan)) for v in val]))
            cost += float(np.mean([c.get("train_seconds", 0) + c.get("predict_seconds", 0) for c in by_method[method]]))
        scores[method] = (float(np.mean(nlls)), cost, ok)
        lines.append(f"{method}: mean validation NLL {scores[method][0]:.4f}, cost {cost:.0f} s, "
                     f"{'within' if ok else 'outside'} 1 point of LoRA on every task")
    for method, why in NOT_ELIGIBLE.items():
        if method in scores:
            lines.append(f"{method}: not eligible, {why}")
    qualified = sorted((nll, cost, m) for m, (nll, cost, ok) in scores.items() if ok and m not in NOT_ELIGIBLE)
    if not qualified:
        return None, lines
    best_nll = qualified[0][0]
    tied = [q for q in qualified if q[0] - best_nll <= TIE_NLL]
    return min(tied, key=lambda q: q[1])[2], lines


def main() -> None:
    suite = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/suite")
    winner, lines = select(suite)
    text = "\n".join(["# Selection", "", *[f"- {line}" for line in lines], "",
                      f"Winner: `{winner}`" if winner else "No method qualifies yet."]) + "\n"
    (suite / "selection.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
