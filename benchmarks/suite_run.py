"""Run the default-recipe suite's cells for one task folder of docs/suite (its committed protocol.json), every
candidate of docs/suite/README.md, method by method, seeds 0-2. Resumes cell by cell: a finished cell is read
back, an interrupted fit resumes from its checkpoint. Commit the cells as they land.

    python benchmarks/suite_run.py docs/suite/sentiment-minilm [--seeds 0 1 2] [--methods lora,lora-llla]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lab_methods  # noqa: F401  (--methods may name an experiment-only method, e.g. a twin beside the suite)

# The candidates, in the order they run (the baseline and the one-forward recipes first); fixed before any cell.
CANDIDATES = ("lora", "temperature", "lora-llla", "mean-field-top2", "mean-field", "tfb", "blob", "bayes-lora-fs",
              "bayes-lora-fs-mean", "laplace-kfac-probit", "low-rank", "ensemble",
              "mean-field-lora")  # fit's default today (Recipe()); added before any selection (docs/suite/README.md)
# On the regression: those that predict a Gaussian (the harness refuses the others in one line)
REGRESSION_CANDIDATES = ("lora", "temperature", "mean-field-top2", "mean-field", "blob", "low-rank", "ensemble",
                         "mean-field-lora")


def main() -> None:
    from pyro_bhpeft.compare import Protocol, run_compare

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", type=Path, help="a docs/suite task folder holding protocol.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", default=None, help="default: the candidates (the Gaussian ones on a regression)")
    parser.add_argument("--quiet", action="store_true", help="no per-step progress bars")
    parser.add_argument("--workers", type=int, default=1,
                        help="cells at a time, one thread each (Ray; the cells sharing a seed's fit run in one task)")
    args = parser.parse_args()
    protocol = Protocol.read(args.task)
    if args.methods is None:
        from suite_select import cannot_run, eliminated, task_kind, tasks

        kind = task_kind(args.task)
        candidates = REGRESSION_CANDIDATES if kind == "regression" else CANDIDATES
        out = eliminated(tasks(args.task.resolve().parent, kind), candidates)  # the rule's first step removed them already
        for method, (name, gap) in out.items():
            print(f"skipping {method}: out of the selection ({gap:+.2f} validation points from LoRA on {name}); "
                  f"--methods {method} runs it anyway")
        for method, (name, why) in cannot_run(args.task.resolve().parent, candidates, kind).items():
            if method not in out:
                print(f"skipping {method}: out of the selection (the harness cannot run it on {name}: it {why})")
                out[method] = (name, why)
        args.methods = ",".join(m for m in candidates if m not in out)
    methods = [m for m in args.methods.split(",") if m]
    if args.workers > 1:  # the harness's Ray path: no fit is made twice, every cell lands as it finishes
        report = run_compare(protocol, args.task, methods=methods, seeds=args.seeds, progress=False,
                             workers=args.workers)
    else:
        for method in methods:  # method-major: each method's seeds land together
            report = run_compare(protocol, args.task, methods=(method,), seeds=args.seeds, progress=not args.quiet)
    print(f"summary: {report}")


if __name__ == "__main__":
    main()
