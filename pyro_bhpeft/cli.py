"""The ``pyro-bhpeft`` command line: fit, evaluate, predict, demo, compare, update, meta-fit, ...

Every user error is one line on stderr naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from .cli_options import (UserError, add_compare_args, add_data_args, add_device_arg, add_recipe_args,
                          library_default, preset_defaults, protocol_from, recipe_from)

__all__ = ["main", "build_parser", "parse_args"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    from .continual import posterior_prior
    from .diagnose import diagnose
    from .predict import DEFAULT_SAMPLES
    from .recipe import Recipe

    parser = argparse.ArgumentParser(
        prog="pyro-bhpeft", description="Bayesian hybrid PEFT (LoRA, Adapter, prefix) of pretrained transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="fit a posterior on a task or your files; writes a run directory")
    parser.bhpeft_commands = {"fit": p}  # subcommands whose defaults a --recipe preset replaces
    add_data_args(p, for_fit=True)
    add_recipe_args(p)
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                   help="save the fit's state to OUT.checkpoint.safetensors every K steps (Ctrl-C always saves it)")
    p.add_argument("--resume", action="store_true", help="continue the fit from OUT.checkpoint.safetensors")
    add_device_arg(p)

    p = sub.add_parser("evaluate", help="accuracy/NLL/Brier/ECE (or MSE) of a saved run")
    p.add_argument("run", help="run directory written by fit")
    add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"posterior samples K (default: {DEFAULT_SAMPLES}; also reports K=0, the mean)")
    p.add_argument("--out", help="JSON file to write (default: RUN/metrics-SPLIT.json)")
    add_device_arg(p)

    p = sub.add_parser("predict", help="per-example predictions with uncertainty to CSV or JSON Lines")
    p.add_argument("run")
    add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"posterior samples K (default: {DEFAULT_SAMPLES})")
    p.add_argument("--out", required=True, help="output file, .csv or .jsonl")
    add_device_arg(p)

    p = sub.add_parser("demo", help="the main job: deterministic LoRA vs BH-PEFT on sentiment, with a report")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a few steps on small slices (for CI)")
    p.add_argument("--overwrite", action="store_true", default=True, help=argparse.SUPPRESS)

    p = sub.add_parser("compare", help="fit several inference schemes on the same data, steps and seeds; "
                                       "table, paired tests and figures")
    add_compare_args(p)

    p = sub.add_parser("diagnose", help="Pareto k-hat, ArviZ summary and posterior plots of a fitted run")
    p.add_argument("run", help="run directory written by fit (mean-field or low-rank)")
    draws, examples = library_default(diagnose, "draws"), library_default(diagnose, "examples")
    p.add_argument("--draws", type=int, default=draws, help=f"posterior draws (default: {draws})")
    p.add_argument("--examples", type=int, default=examples, help="training examples whose log-likelihood, "
                   f"scaled to the full size, enters log p (default: {examples})")
    p.add_argument("--out", help="output directory (default: RUN/diagnostics)")

    p = sub.add_parser("update", help="a new round: fit new data with a previous run's posterior as prior")
    p.add_argument("--from", dest="parent", required=True, help="the previous round's run directory (only read)")
    add_data_args(p, for_fit=True)
    p.add_argument("--temper", type=float, default=library_default(posterior_prior, "temper"),
                   help="forgetting factor: multiplies every prior variance (default 1: exact updating)")
    p.add_argument("--epochs", type=int, help="default: the parent's")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float, help="default: the parent's")
    p.add_argument("--seed", type=int, default=Recipe.seed)
    p.add_argument("--out", required=True, help="run directory for the new round")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("history", help="the chain of rounds that led to a run")
    p.add_argument("run")

    sub.add_parser("tasks", help="list the registered tasks")

    from .meta import MetaConfig

    p = sub.add_parser("meta-fit", help="ABMLL: meta-learn a hierarchical prior over several multiple-choice tasks")
    p.add_argument("--tasks", required=True, help="comma list of registered multiple-choice tasks to meta-train on")
    p.add_argument("--out", required=True, help="run directory to write (its guide: a new task's prior predictive)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--per-task", type=int, default=1000, help="random training examples per task (default: 1000)")
    p.add_argument("--max-length", type=int, default=64)
    for field_name, value in MetaConfig().__dict__.items():
        p.add_argument("--" + field_name.replace("_", "-"), type=type(value), default=value,
                       help=f"(default: {value})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    p = sub.add_parser("meta-evaluate", help="adapt a meta-fitted run to an unseen task's support set and score it")
    p.add_argument("run", help="run directory written by meta-fit")
    p.add_argument("--task", required=True, help="a registered multiple-choice task (unseen in meta-training)")
    p.add_argument("--support", type=int, default=32, help="support examples from its training split (default: 32)")
    p.add_argument("--steps", type=int, default=10, help="adaptation steps on them (default: 10, as the paper)")
    p.add_argument("--samples", type=int, default=4, help="posterior samples K (default: 4)")
    p.add_argument("--eval-size", type=int, default=200, help="test examples scored (default: 200; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="which support set (default: 0)")
    p.add_argument("--save", help="also save the adapted posterior to this run directory")
    return parser


def _columns(args: argparse.Namespace) -> dict[str, str | None]:
    """The column flags as given (None where not given)."""
    from .runs import COLUMNS

    return {name: getattr(args, name) for name in COLUMNS}


def _source(args: argparse.Namespace):
    from .runs import DataSource, file_columns

    if bool(args.task) == bool(args.train):
        raise UserError("give either --task NAME or --train FILE (see `pyro-bhpeft tasks`)")
    if args.task:
        source = DataSource(task=args.task, max_examples=args.max_examples, seed=args.seed)
    else:
        evals = {"validation": args.eval_file} if args.eval_file else None
        source = DataSource(train=str(Path(args.train).resolve()), eval_files=evals, kind=args.kind,
                            columns=file_columns(_columns(args)))
    if args.train_size is not None:
        if args.train_size < 1:
            raise UserError(f"--train-size must be a positive integer, got {args.train_size}")
        source.update(train_size=args.train_size, subset_seed=0)
    return source


def cmd_fit(args: argparse.Namespace) -> None:
    from .backbone import resolve_device
    from .distributed import init_from_env, is_main
    from .runs import fit_run

    device = resolve_device(args.device)
    init_from_env(device)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already holds a run; pass --overwrite to replace it or choose another --out")
    if args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be a number of steps >= 0, got {args.checkpoint_every}")
    recipe, source = recipe_from(args), _source(args)
    result = fit_run(recipe, source.load(), out, source=source, overwrite=args.overwrite,
                     checkpoint_every=args.checkpoint_every, resume=args.resume, device=device)
    if is_main():
        print(f"fit: {result.summary()}; run saved to {out}")


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """Which data evaluate/predict score: ``--split`` of the run's data, or ``--data`` with column flags."""
    given = {k: v for k, v in _columns(args).items() if v is not None}
    if given and not args.data:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} only apply to a --data FILE; drop them to use split {args.split!r} of the run's data")
    return {"split": args.split, "data_file": args.data, "columns": given, "device": args.device}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .io import write_json
    from .runs import evaluate_run

    results = evaluate_run(args.run, samples=args.samples, **_where(args))
    out = Path(args.out) if args.out else Path(args.run) / f"metrics-{results['split']}.json"
    write_json(out, results)
    print(json.dumps(results, indent=2))
    print(f"metrics written to {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .io import write_rows
    from .runs import predict_run

    if Path(args.out).suffix not in (".csv", ".jsonl"):
        raise UserError(f"--out {args.out}: use a .csv or .jsonl file name")
    rows = predict_run(args.run, samples=args.samples, **_where(args))
    write_rows(args.out, rows)
    print(f"{len(rows)} predictions written to {args.out}")


def cmd_update(args: argparse.Namespace) -> None:
    from .runs import update_run

    if not args.temper > 0:
        raise UserError(f"--temper must be positive, got {args.temper}")
    overrides = {k: getattr(args, k) for k in ("epochs", "max_steps", "lr") if getattr(args, k) is not None}
    overrides["seed"] = args.seed
    result = update_run(args.parent, _source(args), args.out, temper=args.temper, overrides=overrides,
                        overwrite=args.overwrite)
    round_ = result.posterior.meta["round"]
    print(f"round {round_}: {result.steps} steps in {result.seconds:.0f} s; run saved to {args.out}")


def cmd_history(args: argparse.Namespace) -> None:
    from .runs import format_lineage, lineage

    print(format_lineage(lineage(args.run)))


def cmd_tasks(args: argparse.Namespace) -> None:
    from .data import TASKS

    for name, spec in TASKS.items():
        print(f"{name:16s} {spec.kind:16s} {spec.description}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import run_compare

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    report = run_compare(protocol_from(args), Path(args.out or f"runs/compare-{args.task}"), methods=args.methods,
                         seeds=range(args.seeds), overwrite=args.overwrite, workers=args.workers,
                         ray_address=args.ray_address, cpus_per_worker=args.cpus_per_worker,
                         gpus_per_worker=args.gpus_per_worker)
    print(f"comparison written to {report}")


def cmd_diagnose(args: argparse.Namespace) -> None:
    from .diagnose import diagnose

    report = diagnose(args.run, args.out, draws=args.draws, examples=args.examples)
    facts = json.loads((report.parent / "diagnostics.json").read_text())
    verdict = "trustworthy" if facts["reliable"] else "NOT trustworthy (k >= 0.7)"
    for line in facts.get("warnings", []):
        print(f"pyro-bhpeft diagnose: warning: {line}", file=sys.stderr)
    print(f"Pareto k-hat {facts['pareto_khat']:.2f}: {verdict}; report written to {report}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick)
    print(f"report written to {report}")


def cmd_meta_fit(args: argparse.Namespace) -> None:
    from .meta import MetaConfig, meta_fit_run

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already holds a run; pass --overwrite to replace it or choose another --out")
    if args.per_task < 1:
        raise UserError(f"--per-task must be a positive integer, got {args.per_task}")
    config = MetaConfig(**{k: getattr(args, k) for k in MetaConfig().__dict__})
    tasks = [t for t in args.tasks.split(",") if t]
    _, result = meta_fit_run(tasks, out, backbone=args.backbone, config=config, per_task=args.per_task,
                             max_length=args.max_length, overwrite=args.overwrite)
    print(f"meta-fit: {config.steps} steps over {len(tasks)} tasks in {result.seconds:.0f} s, last outer loss "
          f"{result.history[-1]:.4f} per example; run saved to {out}")


def cmd_meta_evaluate(args: argparse.Namespace) -> None:
    from .meta import meta_evaluate_run

    if args.support < 1 or args.steps < 0 or args.samples < 0 or args.eval_size < 0:
        raise UserError("--support must be >= 1 and --steps, --samples, --eval-size >= 0")
    result = meta_evaluate_run(args.run, args.task, support=args.support, steps=args.steps, samples=args.samples,
                               query=args.eval_size or None, seed=args.seed, out=args.save)
    print(json.dumps(result, indent=2))


COMMANDS = {"meta-fit": cmd_meta_fit, "meta-evaluate": cmd_meta_evaluate, "fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo, "compare": cmd_compare,
            "diagnose": cmd_diagnose, "update": cmd_update, "history": cmd_history, "tasks": cmd_tasks}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``fit --recipe NAME`` the preset's values are the defaults the flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None):
        parser.bhpeft_commands[args.command].set_defaults(**preset_defaults(args.recipe))
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .assets import AssetError
    from .backbone import BackboneError
    from .checkpoint import FitInterrupted
    from .config import ConfigError
    from .data import DataError
    from .posterior import PosteriorError

    try:
        COMMANDS[args.command](args)
    except (UserError, ConfigError, DataError, PosteriorError, BackboneError, AssetError, FileExistsError,
            ValueError) as err:
        if os.environ.get("PYRO_BHPEFT_DEBUG"):
            raise
        print(f"pyro-bhpeft {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except FitInterrupted as stop:
        again = " with --resume" if args.command == "fit" else ""
        print(f"pyro-bhpeft {args.command}: {stop}; the run was not written; run the same command{again} "
              "to continue", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"pyro-bhpeft {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
