"""Generated answers with their uncertainty (issue 34): run a committed language-model protocol cell by cell.

Reads ``FOLDER/protocol.json`` (see ``docs/lm/README.md``), runs each missing (method, seed) cell and saves it as
``cells/{method}-seed{s}/metrics.json`` and ``answers.jsonl`` (per test question: prompt, gold and generated answer,
match flags and uncertainty scores), atomically; fits are kept under ``fits/`` (git-ignored) and a method with a
``base`` (temperature) reuses its base's fit. Then it writes ``comparison.md``, ``comparison.json`` and
``figures/accuracy-coverage.png`` from every saved cell. A saved cell is never rerun.

    python benchmarks/lm_answers.py docs/lm/arc-easy-smollm2 [--methods lora temperature] [--seeds 0 1]
    python benchmarks/lm_answers.py docs/lm/arc-easy-smollm2 --device cuda    # on a GPU (the cell records it)
    python benchmarks/lm_answers.py docs/lm/arc-easy-smollm2 --train-size 8 --eval-size 4 --max-steps 2 --out /tmp/s

The smoke options change the protocol, so they need ``--out`` naming another folder (refused in one line otherwise).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

SMOKE = ("backbone", "train_size", "eval_size", "max_steps", "samples", "max_new_tokens")
SCORES = ("neg_loglik_mean", "predictive_nll", "predictive_entropy", "mutual_information")
EVAL_BATCH = 4  # test and validation batches (the K next-token distributions of one batch are held at once)
ANSWER_CHUNK = 25  # answers generated between two progress lines


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="the experiment's folder, holding protocol.json")
    parser.add_argument("--methods", nargs="+", help="default: the protocol's methods")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the protocol's seeds")
    parser.add_argument("--out", type=Path, help="write cells elsewhere (needed with any smoke option)")
    parser.add_argument("--backbone", help="smoke: another backbone (a name or a local folder)")
    parser.add_argument("--train-size", type=int, help="smoke: training questions")
    parser.add_argument("--eval-size", type=int, help="smoke: validation and test questions")
    parser.add_argument("--max-steps", type=int, help="smoke: stop each fit after N steps")
    parser.add_argument("--samples", type=int, help="smoke: posterior draws of the Bayesian methods")
    parser.add_argument("--max-new-tokens", type=int, help="smoke: longest answer")
    parser.add_argument("--device", help="where to fit and score (cpu, cuda, auto; default: where the backbone "
                                         "loads, the CPU); recorded in each cell's provenance")
    return parser.parse_args(argv)


def refuse(message: str) -> None:
    print(f"lm_answers: {message}", file=sys.stderr)
    raise SystemExit(2)


def settings(args: argparse.Namespace) -> tuple[dict[str, Any], Path]:
    """The protocol in force and the folder the cells go to. Smoke options only into another folder, whose own
    protocol.json records them (a folder holding cells of other settings is refused)."""
    source = args.folder / "protocol.json"
    if not source.exists():
        refuse(f"{source} not found; give the folder of a committed protocol")
    protocol = json.loads(source.read_text())
    changes = {k: getattr(args, k) for k in SMOKE if getattr(args, k) is not None}
    out = args.out or args.folder
    same = out.resolve() == args.folder.resolve()
    if changes and same:
        refuse(f"{', '.join('--' + k.replace('_', '-') for k in changes)} would change the protocol of "
               f"{args.folder}; add --out OTHER_FOLDER for a smoke run")
    if same:
        return protocol, out
    if "eval_size" in changes:
        size = changes.pop("eval_size")
        changes.update(validation_size=size, test_size=size)
    protocol = {**protocol, **changes, "derived_from": str(args.folder), "overrides": changes}
    saved = out / "protocol.json"
    if saved.exists() and json.loads(saved.read_text()) != protocol:
        refuse(f"{out} holds cells of other settings (its protocol.json differs); choose an empty --out")
    if not saved.exists():
        from pyro_bhpeft.io import write_json

        write_json(saved, protocol)
    return protocol, out


def questions(protocol: dict[str, Any]) -> dict[str, tuple[list[str], list[str]]]:
    """``split -> (prompts, gold responses)``: the protocol's random questions of each split, in the cloze frame."""
    from dataclasses import replace

    import datasets

    from pyro_bhpeft.data import load_task, random_rows
    from pyro_bhpeft.language import qa_pairs

    data = load_task(protocol["task"])
    sizes = {"train": protocol["train_size"], "validation": protocol["validation_size"], "test": protocol["test_size"]}
    picked = datasets.DatasetDict({s: random_rows(data.splits[s], n, protocol["subset_seed"]) for s, n in sizes.items()})
    data = replace(data, splits=picked)
    return {s: qa_pairs(data, s) for s in sizes}


def samples(protocol: dict[str, Any], method: str) -> int:
    own = protocol["methods"][method]["samples"]
    return own if own == 0 else protocol.get("overrides", {}).get("samples", protocol["samples"])


def fitted(protocol: dict[str, Any], out: Path, method: str, seed: int, train: tuple[list[str], list[str]],
           device: str | None = None):
    """``(front door, train seconds, fit folder)``: the method's fit (its ``base``'s, where it has one) at ``seed``,
    loaded from ``fits/`` or fitted and saved there."""
    from pyro_bhpeft import BayesianPEFT
    from pyro_bhpeft.io import write_json

    name = protocol["methods"][method].get("base", method)
    path = out / "fits" / f"{name}-seed{seed}"
    done = path.with_suffix(".json")  # written after the fit is saved: a fit without it is refitted
    if done.exists():
        return BayesianPEFT.load(path, device=device), json.loads(done.read_text())["train_seconds"], path
    how = protocol["methods"][name]["fit"]
    lora = {k: protocol[k] for k in ("r", "lora_alpha", "target_modules") if protocol.get(k) is not None}
    options = {k: protocol[k] for k in ("epochs", "max_steps", "batch_size", "lr", "warmup_ratio", "lr_decay",
                                        "max_length")}
    front = BayesianPEFT(protocol["backbone"], task="language-model", recipe=how.get("recipe"), guide=how.get("guide"),
                         seed=seed, device=device, **lora, **options)
    start = time.perf_counter()
    front.fit({"prompt": train[0], "response": train[1]}, progress=True)
    seconds = time.perf_counter() - start
    front.save(path, overwrite=True)
    write_json(done, {"method": name, "seed": seed, "train_seconds": seconds, "steps": front.result.steps})
    return front, seconds, path


def answers(front: Any, prompts: list[str], gold: list[str], k: int, seed: int, protocol: dict[str, Any],
            temperature: float) -> list[dict[str, Any]]:
    """One row per test question: the greedy answer, its match flags and its uncertainty scores."""
    from pyro_bhpeft.language import answer_match, generate

    rows = []
    for start in range(0, len(prompts), ANSWER_CHUNK):
        chunk = generate(front.posterior, front.backbone.tokenizer, prompts[start:start + ANSWER_CHUNK],
                         max_new_tokens=protocol["max_new_tokens"], num_samples=k, seed=seed, temperature=temperature)
        for row, g in zip(chunk, gold[start:start + ANSWER_CHUNK]):
            rows.append({"prompt": row["prompt"], "gold": g, "answer": row["answer"], **answer_match(row["answer"], g),
                         "tokens": row["tokens"], "neg_loglik_mean": -row["loglik_mean"],
                         **{s: row[s] for s in SCORES[1:]}, "loglik_draws": row["loglik_draws"]})
        print(f"   answers {len(rows)}/{len(prompts)}", flush=True)
    return rows


def answer_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Exact and normalised match, and per score its AUROC for flagging wrong answers and its selective curve."""
    import numpy as np

    from pyro_bhpeft.language import selective_answering

    right = [r["normalised_match"] for r in rows]
    out: dict[str, Any] = {"exact_match": float(np.mean([r["exact_match"] for r in rows])),
                           "normalised_match": float(np.mean(right)), "answer_tokens": float(np.mean(
                               [r["tokens"] for r in rows])), "selective": {}}
    for score in SCORES:
        curve = selective_answering(right, [r[score] for r in rows])
        out[f"auroc_{score}"] = curve.pop("auroc_wrong")
        out["selective"][score] = curve
    return out


def run_cell(protocol: dict[str, Any], out: Path, method: str, seed: int, data: dict,
             device: str | None = None) -> dict[str, Any]:
    """Fit (or load), score the test questions, save the cell atomically; returns its metrics."""
    import torch

    from pyro_bhpeft.io import atomic_dir, write_json, write_rows
    from pyro_bhpeft.language import fit_token_temperature, lm_batches, token_metrics

    spec = protocol["methods"][method]
    print(f"\n== {method}, seed {seed}: {spec['description']} ==", flush=True)
    torch.manual_seed(seed)
    front, train_seconds, fit_path = fitted(protocol, out, method, seed, data["train"], device)
    tok, k, temperature = front.backbone.tokenizer, samples(protocol, method), 1.0
    batches = {s: lm_batches(tok, *data[s], max_length=protocol["max_length"], batch_size=EVAL_BATCH)
               for s in ("validation", "test")}
    if spec.get("post_hoc") == "temperature":
        start = time.perf_counter()
        temperature = fit_token_temperature(front.posterior, batches["validation"])
        train_seconds += time.perf_counter() - start
        print(f"   temperature {temperature:.3f}", flush=True)
    start = time.perf_counter()
    tokens = token_metrics(front.posterior, batches["test"], num_samples=k, seed=seed, temperature=temperature)
    rows = answers(front, *data["test"], k, seed, protocol, temperature)
    metrics = {"method": method, "seed": seed, "samples": k, "temperature": temperature,
               "token_nll": tokens["nll"], "perplexity": tokens["perplexity"],
               "token_accuracy": tokens["token_accuracy"], "token_ece": tokens["token_ece"],
               "response_tokens": tokens["tokens"], **answer_metrics(rows), "train_seconds": train_seconds,
               "predict_seconds": time.perf_counter() - start, "fit": str(fit_path.relative_to(out)),
               "protocol": protocol, "provenance": {**provenance(), "device": str(front.posterior.model._device())}}
    with atomic_dir(out / "cells" / f"{method}-seed{seed}", overwrite=True) as stage:
        write_rows(stage / "answers.jsonl", rows)
        write_json(stage / "metrics.json", metrics)
    print(f"   token NLL {metrics['token_nll']:.3f}  exact match {100 * metrics['exact_match']:.1f}%  AUROC(MI) "
          f"{metrics['auroc_mutual_information']:.3f}  AUROC(-loglik) {metrics['auroc_neg_loglik_mean']:.3f}", flush=True)
    return metrics


def provenance() -> dict[str, Any]:
    import platform

    import torch

    import pyro_bhpeft

    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True)
    return {"library_version": getattr(pyro_bhpeft, "__version__", None), "torch_version": torch.__version__,
            "python": platform.python_version(), "git_commit": git.stdout.strip() or None,
            "saved_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    protocol, out = settings(args)
    methods = args.methods or list(protocol["methods"])
    seeds = list(dict.fromkeys(args.seeds if args.seeds is not None else protocol["seeds"]))
    unknown = sorted(set(methods) - set(protocol["methods"]))
    if unknown:
        refuse(f"unknown method(s) {', '.join(unknown)}; the protocol has {', '.join(protocol['methods'])}")
    todo = [(m, s) for s in seeds for m in methods if not (out / "cells" / f"{m}-seed{s}" / "metrics.json").exists()]
    print(f"{out}: {len(todo)} of {len(methods) * len(seeds)} cells to run", flush=True)
    if todo:
        data = questions(protocol)
        for i, (method, seed) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}]", end="", flush=True)
            run_cell(protocol, out, method, seed, data, args.device)
    print(f"summary: {summarize(out, protocol)}", flush=True)


# ---- the summary -----------------------------------------------------------------------------------------------
# (column, metrics key, multiplier, digits)
TABLE = (("token NLL", "token_nll", 1, 3), ("perplexity", "perplexity", 1, 2), ("token acc %", "token_accuracy", 100, 2),
         ("token ECE %", "token_ece", 1, 2), ("exact match %", "exact_match", 100, 2),
         ("norm. match %", "normalised_match", 100, 2), ("T", "temperature", 1, 3), ("train s", "train_seconds", 1, 0),
         ("predict s", "predict_seconds", 1, 0))
UNCERTAINTY = tuple((f"AUROC {s}", f"auroc_{s}", 1, 3) for s in SCORES)
# (label, method's key, lora's key, multiplier, digits, the method is better when lower, only with draws)
PAIRED = (("token NLL", "token_nll", "token_nll", 1, 3, True, False),
          ("exact match (pts)", "exact_match", "exact_match", 100, 2, False, False),
          ("AUROC: its MI vs lora's -loglik", "auroc_mutual_information", "auroc_neg_loglik_mean", 1, 3, False, True),
          ("AUROC of -loglik (mean weights)", "auroc_neg_loglik_mean", "auroc_neg_loglik_mean", 1, 3, False, False))


def load_cells(out: Path, protocol: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    """``method -> seed -> metrics`` of every saved cell, methods in the protocol's order."""
    cells: dict[str, dict[int, dict[str, Any]]] = {}
    for method in protocol["methods"]:
        found = {int(p.parent.name.rsplit("-seed", 1)[1]): json.loads(p.read_text())
                 for p in sorted((out / "cells").glob(f"{method}-seed*/metrics.json"))}
        if found:
            cells[method] = dict(sorted(found.items()))
    return cells


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample sd of the values that are not NaN (an AUROC where every answer was right or wrong)."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


def table(cells: dict, columns: Sequence[tuple]) -> tuple[str, dict[str, dict[str, Any]]]:
    """A markdown table of mean ± sd over seeds, and the same numbers as ``method -> key -> {mean, sd}``."""
    from pyro_bhpeft.analysis.tables import markdown_table

    rows, numbers = [], {}
    for method, found in cells.items():
        row, numbers[method] = [method, len(found)], {"seeds": list(found)}
        for _, key, mult, digits in columns:
            mean, sd = mean_sd([c[key] for c in found.values()])
            numbers[method][key] = {"mean": mean, "sd": sd}
            row.append("–" if mean != mean else f"{mult * mean:.{digits}f}" + (f" ± {mult * sd:.{digits}f}"
                                                                              if len(found) > 1 else ""))
        rows.append(row)
    return markdown_table(["method", "n", *(c[0] for c in columns)], rows), numbers


def paired(cells: dict) -> list[dict[str, Any]]:
    """Each method against lora on the seeds both have: the per-seed differences, their mean and the seeds each way."""
    rows = []
    for method, found in cells.items():
        shared = [s for s in found if s in cells.get("lora", {})] if method != "lora" else []
        for label, key, base, mult, digits, lower, draws in PAIRED:
            if not shared or (draws and not has_draws(found)):
                continue
            diffs = [mult * (found[s][key] - cells["lora"][s][base]) for s in shared]
            rows.append({"method": method, "comparison": label, "key": key, "seeds": shared, "differences": diffs,
                         "mean": mean_sd(diffs)[0], "better": sum(d < 0 if lower else d > 0 for d in diffs),
                         "worse": sum(d > 0 if lower else d < 0 for d in diffs),  # NaN (no AUROC) and ties: neither
                         "digits": digits, "better_is": "lower" if lower else "higher"})
    return rows


def targets(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> dict[str, Any]:
    """The protocol's three targets for its judged method, from the paired rows (a verdict needs every seed)."""
    method = protocol["targets"]["judged_on"].split()[0]
    mine = {r["key"]: r for r in rows if r["method"] == method}
    if not {"token_nll", "exact_match", "auroc_mutual_information"} <= set(mine):
        return {"method": method, "verdict": "no cells yet"}
    n = len(mine["token_nll"]["seeds"])
    result = {"method": method, "seeds": n,
              "token_nll_lower_every_seed": mine["token_nll"]["better"] == n,
              "mi_auroc_higher_mean_and_every_seed": mine["auroc_mutual_information"]["mean"] > 0
              and mine["auroc_mutual_information"]["better"] == n,
              "exact_match_within_1_point": mine["exact_match"]["mean"] >= -1.0}
    complete = n == len(protocol["seeds"])
    result["verdict"] = ("met" if all(v for k, v in result.items() if k.endswith(("seed", "point"))) else "missed") \
        if complete else f"no verdict: {n} of the protocol's {len(protocol['seeds'])} seeds"
    return result


def paired_table(rows: list[dict[str, Any]]) -> str:
    from pyro_bhpeft.analysis.tables import markdown_table

    def signed(value: float, digits: int) -> str:
        return "–" if value != value else f"{value:+.{digits}f}"

    body = [[r["method"], r["comparison"], ", ".join(f"s{s} {signed(d, r['digits'])}" for s, d in zip(r["seeds"],
             r["differences"])), signed(r["mean"], r["digits"]), f"{r['better']} better ({r['better_is']}), "
             f"{r['worse']} worse of {len(r['seeds'])}"] for r in rows]
    return markdown_table(["method", "method minus lora", "per seed", "mean", "seeds each way"], body)


def figure(out: Path, cells: dict, seed: int) -> str | None:
    """Accuracy against coverage at ``seed``, one curve per method (by mutual information where the method has
    draws, else by its answer's negative log-likelihood)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = {m: found[seed] for m, found in cells.items() if seed in found}
    if not at:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method, cell in at.items():
        score = "mutual_information" if cell["samples"] else "neg_loglik_mean"
        curve = cell["selective"][score]
        ax.plot(curve["coverage"], [100 * a for a in curve["accuracy"]], label=f"{method} ({score})")
    ax.set(xlabel="coverage (most certain answers kept)", ylabel="normalised match %",
           title=f"Accuracy against coverage, seed {seed}")
    ax.legend(fontsize=7)
    path = out / "figures" / "accuracy-coverage.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path.relative_to(out))


def wrong_auroc(rows: list[dict[str, Any]], values: Sequence[float]) -> float:
    """AUROC of ``values`` for flagging the wrong (not normalised-matching) answers among ``rows``."""
    from pyro_bhpeft.language import selective_answering

    return selective_answering([r["normalised_match"] for r in rows], values)["auroc_wrong"]


# (column, one answer's score read from its row, needs posterior draws): what the mutual information carries
# besides the answer's length, and what lora's own score carries
ATTRIBUTION = (("AUROC answer length", lambda r: r["tokens"], False),
               ("AUROC -loglik per token", lambda r: r["neg_loglik_mean"] / max(r["tokens"], 1), False),
               ("AUROC MI per token", lambda r: r["mutual_information"] / max(r["tokens"], 1), True),
               ("AUROC sd of draws' loglik", lambda r: statistics.pstdev(r["loglik_draws"]), True))
# (column, the score correlated with the answer's length over the test answers, needs posterior draws)
CORRELATIONS = (("corr(-loglik, length)", "neg_loglik_mean", False), ("corr(MI, length)", "mutual_information", True))


def has_draws(found: dict[int, dict[str, Any]]) -> bool:
    """Whether a method's cells predict with posterior draws (``samples`` > 0)."""
    return bool(found[next(iter(found))]["samples"])


def correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson's correlation, NaN where either is constant."""
    import numpy as np

    return float(np.corrcoef(xs, ys)[0, 1]) if np.std(xs) > 0 and np.std(ys) > 0 else math.nan


def attribution(out: Path, cells: dict) -> tuple[str, dict[str, dict[str, Any]]]:
    """Why the mutual information flags wrong answers as it does, from each cell's ``answers.jsonl``: for lora and
    each method with draws, the AUROC of the answer's length alone and of its negative log-likelihood per token,
    and (with draws) of its mutual information per token and of the spread of its log-likelihood over the draws;
    and the correlations of the summed scores with the length. A column that needs draws is NaN for lora."""
    derived: dict[str, dict[int, dict[str, float]]] = {}
    for method, found in cells.items():
        draws = has_draws(found)
        if method != "lora" and not draws:
            continue
        for seed in found:
            path = out / "cells" / f"{method}-seed{seed}" / "answers.jsonl"
            rows = [json.loads(line) for line in path.read_text().splitlines() if line]
            tokens = [r["tokens"] for r in rows]
            one = {label: wrong_auroc(rows, [score(r) for r in rows]) if draws or not needs else math.nan
                   for label, score, needs in ATTRIBUTION}
            one.update({label: correlation([r[key] for r in rows], tokens) if draws or not needs else math.nan
                        for label, key, needs in CORRELATIONS})
            derived.setdefault(method, {})[seed] = one
    columns = [(label, label, 1, 3) for label, *_ in ATTRIBUTION] + [(label, label, 1, 2) for label, *_ in CORRELATIONS]
    return table(derived, columns)


def _rounded(value: Any) -> Any:
    """``value`` with every float at 12 significant digits: the summary then regenerates byte for byte on another
    install, whose sums may differ in the last bits (numpy's summation order)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def summarize(out: Path, protocol: dict[str, Any]) -> Path:
    """``comparison.md`` and ``comparison.json`` (and the figure) from every saved cell of ``out``."""
    from pyro_bhpeft.io import write_json, write_text

    cells = load_cells(out, protocol)
    main_md, numbers = table(cells, TABLE)
    unc_md, unc_numbers = table(cells, UNCERTAINTY)
    rows = paired(cells)
    verdict = targets(rows, protocol)
    fig = figure(out, cells, protocol["seeds"][0])
    for method in numbers:
        numbers[method].update({k: v for k, v in unc_numbers[method].items() if k != "seeds"})
    why_md, why_numbers = attribution(out, cells) if any(has_draws(f) for f in cells.values()) else ("", {})
    write_json(out / "comparison.json", _rounded({"cells": numbers, "paired": rows, "targets": verdict,
                                                  "attribution": why_numbers}))
    smoke = f" Smoke run: {protocol['overrides']} changed from {protocol['derived_from']}." if "overrides" in protocol else ""
    lines = [f"# {protocol['name']}: generated answers with their uncertainty", "",
             f"Protocol: `protocol.json` ({protocol['task']}, {protocol['backbone']}, {protocol['train_size']} "
             f"training / {protocol['test_size']} test questions, K = {protocol['samples']}); mean ± sd over seeds; "
             f"n: the seeds a row is over.{smoke}", "", main_md, "",
             "Token metrics: of the gold responses' tokens under each method's predictive. Matches: greedy answers "
             "under the posterior mean.", "", "## Telling wrong answers from right ones (normalised match)", "",
             unc_md, "", "AUROC of each score for flagging wrong answers (0.5: no better than chance; a score that "
             "is constant, as lora's mutual information, gives 0.5).", "",
             "## Paired against lora, seed by seed", "", paired_table(rows) if rows else "(no shared seeds with lora)",
             "", f"**Targets** (issue 34, judged on `{verdict['method']}`): {verdict['verdict']}."]
    if "seeds" in verdict:
        lines += [f"- token NLL below lora's on every seed: {verdict['token_nll_lower_every_seed']}",
                  f"- MI AUROC above lora's -loglik AUROC, on the mean and every seed: "
                  f"{verdict['mi_auroc_higher_mean_and_every_seed']}",
                  f"- exact match at most 1 point below lora's (mean): {verdict['exact_match_within_1_point']}"]
    if why_md:
        lines += ["", "## Where the mutual information's signal comes from", "", why_md, "",
                  "AUROC columns: a score for flagging wrong answers, as above: the answer's length alone (its "
                  "tokens), its negative log-likelihood under the mean weights per token, its mutual information "
                  "per token, and the spread (sd) of its log-likelihood over the K draws. corr: the correlation "
                  "over the test answers of the summed score with the length. –: the column needs posterior "
                  "draws."]
    lines += ["", "## Methods", ""] + [f"- `{m}`: {protocol['methods'][m]['description']}" for m in cells]
    if fig:
        lines += ["", f"![accuracy against coverage]({fig})"]
    return write_text(out / "comparison.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
