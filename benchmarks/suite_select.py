"""The default-recipe selection rule of docs/suite/README.md, applied to the suite's committed cells, and the
"which method when" table.

The rule was written before any cell of the suite ran. On validation metrics only (each cell's ``validation``
block), per kind of task: on the classification tasks, keep the methods within 1 accuracy point of LoRA on every
task; among them the lowest validation NLL averaged over the tasks wins; on the regression, the lowest validation
Gaussian NLL among the methods that predict a Gaussian. Ties within 0.001 go to the lower cost (training plus
prediction seconds). No winner is named until every candidate has all its seeds on every task of the kind.
Writes ``selection.md``, ``which-method.md`` (test metrics against LoRA per task: the user-facing table),
``targets.md`` (the default the rule names against issue 32's targets, ``suite_targets.py``) and
``figures/which-method.png`` in the suite folder.

    python benchmarks/suite_select.py docs/suite
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # suite_run's candidate lists

TOLERANCE_POINTS, TIE_NLL, SEEDS = 1.0, 0.001, 3
NOT_ELIGIBLE = {"temperature": "fitted on the validation split the rule reads (in-sample)",
                "lora": "the deterministic baseline the candidates are measured against"}


def cells(task: Path) -> dict[str, list[dict]]:
    """Method -> the metrics of its seeds' cells (those that record validation metrics), in seed order."""
    out: dict[str, list[dict]] = defaultdict(list)
    for file in sorted(task.glob("cells/*/metrics.json")):
        record = json.loads(file.read_text())
        if "validation" in record:
            method, seed = file.parent.name.rsplit("-seed", 1)
            out[method].append({**record, "seed": int(seed)})
    return out


def task_kind(folder: Path) -> str:
    """``"regression"`` or ``"classification"``, from the registered task the folder's protocol names."""
    from pyro_bhpeft.data import TASKS

    task = json.loads((folder / "protocol.json").read_text()).get("task")
    return "regression" if task in TASKS and TASKS[task].kind == "regression" else "classification"


def task_folders(suite: Path, kind: str | None = None) -> list[Path]:
    """Every folder of the suite holding a protocol.json (of ``kind`` only, when given)."""
    return [p for p in sorted(suite.iterdir()) if (p / "protocol.json").is_file()
            and (kind is None or task_kind(p) == kind)]


def cannot_run(suite: Path, candidates: Sequence[str], kind: str = "classification") -> dict[str, tuple[str, str]]:
    """Candidates the comparison harness refuses on a task of ``kind`` (``compare.refusal``: the peft library's
    LoRA or a closed form over the classifier head, on choices scored by their likelihood under a causal LM):
    they cannot be within 1 point of LoRA there, so the rule's first step removes them. Method -> (the first such
    task, why)."""
    from pyro_bhpeft.compare import METHODS, Protocol, refusal

    out: dict[str, tuple[str, str]] = {}
    for folder in task_folders(suite, kind):
        protocol = Protocol.read(folder)
        for method in [m for m in candidates if m in METHODS]:  # a name the harness does not know: no facts
            why = refusal(protocol, method)
            if why and method not in out:
                out[method] = (folder.name, why)
    return out


def tasks(suite: Path, kind: str | None = None) -> dict[str, dict[str, list[dict]]]:
    """Task folder -> its cells (every folder of the suite holding a protocol.json), those of ``kind`` only when
    given."""
    return {p.name: cells(p) for p in task_folders(suite, kind)}


def _accuracy_gap(by_method: dict[str, list[dict]], method: str) -> float | None:
    """Mean validation accuracy of ``method`` minus LoRA's, in points, once both have all their seeds (None before,
    or on a regression)."""
    found, lora = by_method.get(method, []), by_method.get("lora", [])
    if len(found) < SEEDS or len(lora) < SEEDS or "accuracy" not in found[0]["validation"]:
        return None
    gap = 100 * (np.mean([c["validation"]["accuracy"] for c in found]) - np.mean([c["validation"]["accuracy"] for c in lora]))
    return round(float(gap), 9)  # "within 1 point" includes 1 point: 15 of 1,500 answers is -1.0, not -1.0000000000000009


def eliminated(by_task: dict[str, dict[str, list[dict]]], candidates: Sequence[str]) -> dict[str, tuple[str, float]]:
    """Candidates the rule's first step removes already: more than 1 point below LoRA's validation accuracy on a
    task where both have all their seeds (the step asks for every task, so no other task can bring them back).
    Method -> (the first such task, the gap in points)."""
    out = {}
    for method in candidates:
        for name, by_method in by_task.items():
            gap = _accuracy_gap(by_method, method)
            if gap is not None and gap < -TOLERANCE_POINTS:
                out[method] = (name, gap)
                break
    return out


# Methods that cannot be the default of ``fit`` whatever their numbers, and why (the rule names them all the same)
NOT_ONE_FIT = {"ensemble": "several fits, 3x LoRA's training by construction: fit's default is one fit, and issue 32 "
                           "caps it at 1.5x LoRA's training time"}


def needs_extra(method: str) -> str | None:
    """The optional install a compare method needs (its ``requires``), or None for the base install."""
    from pyro_bhpeft.compare import METHODS

    requires = METHODS[method].requires if method in METHODS else None
    return requires[1] if requires else None


def why_not_default(method: str) -> str | None:
    """Why ``method`` cannot be the default of ``fit`` (None if it can): an optional install, or not one fit.
    One fit with a post-hoc step of the library's own (``tfb``, ``lora-llla``'s Laplace head, both one pass over
    data after the fit) can: becoming the default then means running that step at the end of ``fit``."""
    extra = needs_extra(method)
    return f"needs an optional install ({extra})" if extra else NOT_ONE_FIT.get(method)


def select(suite: Path, kind: str = "classification", candidates: Sequence[str] | None = None,
           as_default: bool = False) -> tuple[str | None, list[str]]:
    """The winner among the tasks of ``kind`` (None until every candidate has all its seeds on every such task,
    or if none qualifies) and the reasoning: one line per method complete so far, then what is still to run.
    ``candidates``: default the suite's (``suite_run.CANDIDATES``, or its Gaussian ones on a regression).
    ``as_default``: the winner among the methods that can be the default of ``fit`` (:func:`why_not_default`)."""
    if candidates is None:
        from suite_run import CANDIDATES, REGRESSION_CANDIDATES

        candidates = REGRESSION_CANDIDATES if kind == "regression" else CANDIDATES
    by_task = tasks(suite, kind)
    if not by_task:
        return None, []
    out = eliminated(by_task, candidates)
    missing = {m: [n for n, t in by_task.items() if len(t.get(m, [])) < SEEDS] for m in candidates}
    lines, scores = [], {}
    for method, (name, gap) in out.items():
        if missing[method]:  # out on a finished task: its other tasks cannot bring it back
            lines.append(f"`{method}`: out: validation accuracy {gap:+.2f} points from LoRA's on {name} (all {SEEDS} "
                         f"seeds of both); need not run on {', '.join(missing[method])}")
            missing[method] = []
    refused = cannot_run(suite, candidates, kind)
    for method, (name, why) in refused.items():
        if method not in out:  # no cells can exist there, so it cannot be within 1 point on every task
            others = [n for n in missing[method] if n != name]
            lines.append(f"`{method}`: out: the harness cannot run it on {name} (it {why})"
                         + (f"; need not run on {', '.join(others)}" if others else ""))
            missing[method] = []
    for method in [m for m in candidates if all(len(t.get(m, [])) >= SEEDS for t in by_task.values())]:
        ok, nlls, cost = method not in out, [], 0.0
        for by_method in by_task.values():
            val = [c["validation"] for c in by_method[method]]
            nlls.append(np.mean([v["nll"] for v in val]))
            cost += float(np.mean([c["train_seconds"] + c["predict_seconds"] for c in by_method[method]]))
        scores[method] = (float(np.mean(nlls)), cost, ok)
        lines.append(f"`{method}`: mean validation NLL {scores[method][0]:.4f}, cost {cost:.0f} s"
                     + ((", within 1 point of LoRA's validation accuracy on every task" if ok else
                         f", out: validation accuracy {out[method][1]:+.2f} points from LoRA's on {out[method][0]}")
                        if kind == "classification" else "")
                     + (f"; not eligible: {NOT_ELIGIBLE[method]}" if method in NOT_ELIGIBLE else ""))
    pending = [f"`{m}` on " + ", ".join(f"{n} ({len(by_task[n].get(m, []))} of {SEEDS} seeds in)" for n in where)
               for m, where in missing.items() if where]

    def can_win(method: str) -> bool:  # eligible, and (as_default) able to be fit's default
        return method not in NOT_ELIGIBLE and not (as_default and why_not_default(method))

    qualified = sorted((nll, cost, m) for m, (nll, cost, ok) in scores.items() if ok and can_win(m))
    leader = None
    if qualified:
        best_nll = qualified[0][0]
        tied = [q for q in qualified if q[0] - best_nll <= TIE_NLL]
        leader = min(tied, key=lambda q: q[1])
    if pending:
        lines += standing(by_task, [m for m in candidates if m not in out and m not in refused])
        bounds = {m: lowest_possible(by_task, m) for m, where in missing.items() if where and can_win(m)}
        lora_done = all(len(t.get("lora", [])) >= SEEDS for t in by_task.values())
        if leader and lora_done and all(b > leader[0] + TIE_NLL for b in bounds.values()):
            lines += [f"`{m}` cannot overtake `{leader[2]}` whatever its missing cells hold: its mean validation NLL "
                      f"is at least {b:.4f} (its missing seeds counted as 0), above {leader[0]:.4f} + {TIE_NLL:g}"
                      for m, b in bounds.items()]
            lines.append(f"still to run, for the tables (they cannot change the outcome): " + "; ".join(pending))
            return leader[2], lines
        lines.append("still to run: " + "; ".join(pending))
        return None, lines
    return (leader[2] if leader else None), lines


def lowest_possible(by_task: dict[str, dict[str, list[dict]]], method: str) -> float:
    """The lowest mean validation NLL ``method`` can still end with: its missing seeds at NLL 0 (the bound an NLL
    cannot go below), its finished ones as they are."""
    return float(np.mean([sum(c["validation"]["nll"] for c in t.get(method, [])[:SEEDS]) / SEEDS
                          for t in by_task.values()]))


def standing(by_task: dict[str, dict[str, list[dict]]], remaining: Sequence[str]) -> list[str]:
    """While tasks are unfinished: the mean validation NLL of the ``remaining`` candidates over the tasks where
    every one of them has all its seeds (one line, best first; empty if no task or every task is finished)."""
    done = [n for n, t in by_task.items() if all(len(t.get(m, [])) >= SEEDS for m in remaining)]
    if not done or len(done) == len(by_task):
        return []
    nll = {m: float(np.mean([np.mean([c["validation"]["nll"] for c in by_task[n][m]]) for n in done]))
           for m in remaining}
    waits = ", ".join(n for n in by_task if n not in done)
    ranked = ", ".join(f"`{m}` {v:.4f}" + (" (not eligible)" if m in NOT_ELIGIBLE else "")
                       for m, v in sorted(nll.items(), key=lambda item: item[1]))
    return [f"so far, not a selection (the rule waits on {waits}): mean validation NLL over {', '.join(done)}: "
            + ranked]


def _mean(found: list[dict], key: str) -> float:
    values = [c[key] for c in found if c.get(key) is not None]
    return float(np.mean(values)) if values else float("nan")


def _same_seeds(found: list[dict], lora: list[dict]) -> list[dict]:
    """LoRA's cells on the seeds ``found`` has: a method with seeds still to run is set against those only."""
    seeds = {c["seed"] for c in found}
    return [c for c in lora if c["seed"] in seeds]


def vs_lora(found: list[dict], lora: list[dict], key: str) -> float:
    """The method's mean ``key`` as a multiple of LoRA's on the same seeds (costs, ECE, MSE)."""
    return _mean(found, key) / _mean(_same_seeds(found, lora), key)


def minus_lora(found: list[dict], lora: list[dict], key: str, scale: float = 1.0) -> float:
    """The method's mean ``key`` minus LoRA's on the same seeds, times ``scale`` (100: accuracy in points)."""
    return scale * (_mean(found, key) - _mean(_same_seeds(found, lora), key))


def which_rows(by_method: dict[str, list[dict]]) -> list[list[str]]:
    """One row per method of one task: test metrics and costs against LoRA's (means over the method's seeds)."""
    lora = by_method.get("lora")
    if not lora:
        return []
    regression = "mse" in lora[0]
    rows = []
    for method, found in by_method.items():
        cost = vs_lora(found, lora, "train_seconds")
        predict = vs_lora(found, lora, "predict_seconds")
        if regression:
            cols = [f"{vs_lora(found, lora, 'mse'):.2f}x", f"{_mean(found, 'nll'):.3f}",
                    f"{100 * _mean(found, 'coverage90'):.1f}"]
        else:
            base = {c["seed"]: c for c in lora}
            paired = [(c, base[c["seed"]]) for c in found if c["seed"] in base]
            wins = sum(a["nll"] < b["nll"] and a["ece"] < b["ece"] for a, b in paired)
            cols = [f"{minus_lora(found, lora, 'accuracy', 100):+.2f}", f"{_mean(found, 'nll'):.3f}",
                    f"{_mean(found, 'ece'):.2f} ({vs_lora(found, lora, 'ece'):.2f}x)",
                    f"{minus_lora(found, lora, 'ood_auroc'):+.3f}",
                    f"{wins}/{len(paired)}"]
        rows.append([f"`{method}`", str(len(found)), *cols, f"{cost:.2f}x", f"{predict:.2f}x"])
    return rows


CLASS_HEADERS = ["method", "n", "Δ accuracy (pts)", "NLL", "ECE % (x LoRA)", "Δ OOD AUROC",
                 "seeds better on NLL and ECE", "train time", "predict time"]
REGRESSION_HEADERS = ["method", "n", "MSE (x LoRA)", "Gaussian NLL", "90% coverage %", "train time", "predict time"]


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers), *("| " + " | ".join(r) + " |" for r in rows)]


def glance_rows(suite: Path) -> tuple[list[str], list[list[str]]]:
    """One row per method over the classification tasks: per task its test NLL, ECE as a multiple of LoRA's and
    accuracy change (means over its seeds there, with the count where fewer than all), then the range of its
    training and prediction time against LoRA's; "–" where it did not run."""
    from suite_run import CANDIDATES

    by_task = {n: t for n, t in tasks(suite, "classification").items() if t.get("lora")}
    ran = {m for t in by_task.values() for m in t}
    methods = [m for m in CANDIDATES if m in ran] + sorted(ran - set(CANDIDATES))
    stopped = {**eliminated(by_task, CANDIDATES), **cannot_run(suite, CANDIDATES)}  # out: need not run anywhere
    headers = ["method", *[f"`{n}`" for n in by_task], "train time", "predict time"]
    rows = []
    for method in methods:
        cells, train, predict = [], [], []
        for by_method in by_task.values():
            found, lora = by_method.get(method, []), by_method["lora"]
            if not found:
                cells.append("–" if method in stopped or method not in CANDIDATES else "still to run")
                continue
            ratio = vs_lora(found, lora, "ece")
            dacc = round(minus_lora(found, lora, "accuracy", 100), 9) + 0.0  # no "-0.00"
            cells.append(f"{_mean(found, 'nll'):.3f} · {ratio:.2f}x · {dacc:+.2f}"
                         + (f" ({len(found)} of {SEEDS} seeds)" if len(found) < SEEDS else ""))
            train.append(vs_lora(found, lora, "train_seconds"))
            predict.append(vs_lora(found, lora, "predict_seconds"))
        rows.append([f"`{method}`", *cells, *(f"{min(v):.2f}x" if f"{min(v):.2f}" == f"{max(v):.2f}" else
                                              f"{min(v):.2f}-{max(v):.2f}x" for v in (train, predict))])
    return headers, rows


def which_method(suite: Path) -> str:
    headers, rows = glance_rows(suite)
    lines = ["# Which method when: the suite's test metrics against deterministic LoRA", "",
             "Generated by `python benchmarks/suite_select.py docs/suite` from the committed cells (test split; means "
             "over each method's seeds, n). Δ: method minus `lora` on the method's seeds; x: ratio to `lora` on them; "
             "train and predict time: ratios "
             "of the cells' wall-clock seconds on one shared 2-core machine, rough: cells run with two threads "
             "(`suite_run.py`) and with one (`--workers 2`) sit side by side, and other jobs shared the machine "
             "(the timed step costs are in [speed](../results/speed.md)). The default is chosen on the validation "
             "split ([selection](selection.md)), never on these numbers.", "",
             "## At a glance: the classification tasks", "",
             "Per task: test NLL · ECE as a multiple of LoRA's · accuracy change in points, means over the method's "
             f"seeds there (their number where fewer than {SEEDS} are in); then the range of its training and "
             "prediction time against LoRA's over the tasks it ran on. \"–\": not run there (out of the selection "
             "before that task, or refused by the harness: [selection](selection.md)); \"still to run\": its cells "
             "there are not all in yet. The sections below give every column per task.", "", *_table(headers, rows), ""]
    for name, by_method in tasks(suite).items():
        rows = which_rows(by_method)
        if not rows:
            continue
        regression = "mse" in by_method["lora"][0]
        lines += [f"## `{name}`", "", *_table(REGRESSION_HEADERS if regression else CLASS_HEADERS, rows), ""]
    return "\n".join(lines) + "\n"


def figure(suite: Path) -> Path | None:
    """Test NLL against training time (both relative to LoRA) per classification task, one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {n: t for n, t in tasks(suite).items() if t.get("lora") and "mse" not in t["lora"][0]}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (name, by_method) in zip(axes[0], panels.items()):
        lora = by_method["lora"]
        for method, found in by_method.items():
            x = vs_lora(found, lora, "train_seconds")
            ax.scatter(x, _mean(found, "nll"))
            ax.annotate(method, (x, _mean(found, "nll")), fontsize=7)
        ax.set(title=name, xlabel="training time (x LoRA)", ylabel="test NLL")
    path = suite / "figures" / "which-method.png"
    path.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    suite = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/suite")
    parts = ["# Selection (validation split; the rule in [README](README.md))", ""]
    for kind in ("classification", "regression"):
        winner, lines = select(suite, kind)
        parts += [f"## {kind.capitalize()} tasks", "", *[f"- {line}" for line in lines], "",
                  f"Winner: `{winner}`" if winner else "No winner yet.", ""]
        default, default_lines = select(suite, kind, as_default=True)
        if winner and why_not_default(winner):  # fit's default is one fit on the base install
            parts += [f"`{winner}` cannot be the default of `fit`: {why_not_default(winner)}. " +
                      (f"The default is the best candidate that can: `{default}`." if default else
                       "No candidate that can qualifies: the default stays as it is."), ""]
        elif default and not winner:  # the candidates still running can win the rule but not be fit's default
            rivals = [f"- {line}" for line in default_lines if " cannot overtake " in line]
            parts += [f"The default of `fit` is decided before the winner: `{default}`. Every candidate that can be "
                      "the default (one fit, on the base install) has all its cells"
                      + (", or could not overtake it whatever its missing cells hold:" if rivals else "."), "",
                      *rivals, *([""] if rivals else [])]
    text = "\n".join(parts)
    (suite / "selection.md").write_text(text)
    (suite / "which-method.md").write_text(which_method(suite))
    from suite_targets import targets  # the default the rule names, against its targets on the test split

    (suite / "targets.md").write_text(targets(suite))
    drawn = figure(suite)
    print(text)
    print(f"wrote {suite / 'selection.md'}, {suite / 'which-method.md'}, {suite / 'targets.md'}"
          + (f", {drawn}" if drawn else ""))


if __name__ == "__main__":
    main()
