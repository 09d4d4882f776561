"""The ``pyro-bhpeft`` command line: fit, evaluate, predict, demo.

Every user error is one line on stderr naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser", "parse_args"]

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _default(fn: Any, name: str) -> Any:
    """The default of keyword ``name`` of ``fn``: the library, not the parser, holds it."""
    return inspect.signature(fn).parameters[name].default


def _add_data_args(p: argparse.ArgumentParser, *, for_fit: bool) -> None:
    from .data import load_files
    from .runs import COLUMNS

    g = p.add_argument_group("data (a registered task, or your own files)")
    if for_fit:
        g.add_argument("--task", help="registered task name (see `pyro-bhpeft tasks`)")
        g.add_argument("--train", help="your training file: .csv, .jsonl or .parquet")
        g.add_argument("--eval", dest="eval_file", help="your evaluation file (default: split off the train file)")
        g.add_argument("--kind", default=_default(load_files, "kind"),
                       choices=("classification", "multiple_choice", "regression"))
        g.add_argument("--max-examples", type=int, help="cap every split at N rows (quick runs)")
        g.add_argument("--train-size", type=int, help="train on N training rows drawn at random (seed 0)")
    else:
        g.add_argument("--split", default="test", help="split of the run's own data (default: test)")
        g.add_argument("--data", help="a file to use instead, read with the run's column names")
    for name, default in COLUMNS.items():  # None: not given (evaluate/predict then use the run's own)
        flag, what = "--" + name.replace("_", "-"), name.removesuffix("_column")
        g.add_argument(flag, help=f"column holding the {what} (default: " + (
            f"{default})" if for_fit else f"the run's own, else {default}; with --data only)"))


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    from .config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig
    from .recipe import Recipe

    g = p.add_argument_group("model and inference")
    g.add_argument("--backbone", default=Recipe.backbone, help="packaged alias, local folder or hub id "
                                                               f"(default: {Recipe.backbone})")
    from .guides import GUIDES, SCALE_PARAMS
    from .peft import PEFT_KINDS
    from .priors import PRIORS
    from .recipe import PRESETS

    g.add_argument("--recipe", choices=PRESETS.names(), help="start from a named recipe (its values become the "
                   f"defaults of every option below): {', '.join(PRESETS)}")
    peft = ",".join(_peft_names(PeftConfig()))
    g.add_argument("--peft", default=peft, type=_csv,
                   help=f"PEFT parts, a comma list of {', '.join(PEFT_KINDS)} (default: {peft})")
    g.add_argument("--lora-r", type=int, default=LoraConfig.r)
    g.add_argument("--lora-alpha", type=float, default=LoraConfig.alpha)
    g.add_argument("--lora-targets", type=_csv, default=LoraConfig.targets)
    g.add_argument("--adapter-size", type=int, default=AdapterConfig.bottleneck, help="adapter bottleneck width")
    g.add_argument("--prefix-length", type=int, default=PrefixConfig.length)
    g.add_argument("--prior", default=Recipe.prior, choices=PRIORS.names())
    g.add_argument("--prior-scale", type=float, default=Recipe.prior_scale)
    g.add_argument("--guide", default=Recipe.guide, choices=GUIDES.names(),
                   help="posterior family: " + "; ".join(f"{n}: {k.description}" for n, k in GUIDES.items()))
    g.add_argument("--rank", type=int, default=Recipe.rank, help="rank of the low-rank guide")
    g.add_argument("--init-scale", type=float, default=Recipe.init_scale, help="initial posterior standard deviation")
    g.add_argument("--init-scale-high", type=float, default=Recipe.init_scale_high,
                   help="draw each initial scale between --init-scale and this")
    g.add_argument("--scale-param", default=Recipe.scale_param, choices=SCALE_PARAMS,
                   help="how mean-field scales are parameterised (log: scale-free steps; rho2: BLoB's)")
    g.add_argument("--deterministic", type=_csv, default=Recipe.deterministic,
                   help="comma list of site-name globs kept point masses, e.g. '*.lora_B,head.*'")
    g.add_argument("--kl-weight", type=float, default=Recipe.kl_weight)
    g.add_argument("--kl-anneal-steps", type=int, default=Recipe.kl_anneal_steps)
    g.add_argument("--kl-step-lr", type=float, default=Recipe.kl_step_lr,
                   help="BLoB's separate SGD step on the KL term at this rate (default: one joint step)")
    g.add_argument("--kl-reweighting", default=Recipe.kl_reweighting, choices=("blob", "uniform"))
    g.add_argument("--flipout", action=argparse.BooleanOptionalAction, default=Recipe.flipout,
                   help="decorrelate LoRA A's noise across the examples of a batch (mean-field)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=Recipe.epochs)
    t.add_argument("--max-steps", type=int, default=Recipe.max_steps)
    t.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    t.add_argument("--lr", type=float, default=Recipe.lr)
    t.add_argument("--scale-lr", type=float, default=Recipe.scale_lr,
                   help="learning rate of posterior scales (default: --lr)")
    t.add_argument("--max-length", type=int, default=Recipe.max_length)
    t.add_argument("--seed", type=int, default=Recipe.seed)


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    from .compare import DEFAULT_METHODS, METHODS, Protocol, run_compare

    p.add_argument("--task", default=Protocol.task, help=f"registered task (default: {Protocol.task})")
    p.add_argument("--methods", type=_csv, default=DEFAULT_METHODS,
                   help=f"comma list of {', '.join(METHODS)} (default: all)")
    seeds = len(_default(run_compare, "seeds"))
    p.add_argument("--seeds", type=int, default=seeds, help=f"number of seeds, 0..N-1 (default: {seeds})")
    p.add_argument("--out", help="comparison directory (default: runs/compare-TASK); finished cells are reused")
    p.add_argument("--overwrite", action="store_true", help="discard a comparison made under another protocol")
    g = p.add_argument_group("protocol (the same for every method)")
    g.add_argument("--backbone", default=Protocol.backbone)
    g.add_argument("--train-size", type=int, default=Protocol.train_size, help="N training examples drawn at random (seed 0)")
    g.add_argument("--eval-size", type=int, default=Protocol.eval_size,
                   help="N test / validation / OOD examples drawn at random (seed 0)")
    g.add_argument("--epochs", type=int, default=Protocol.epochs)
    g.add_argument("--max-steps", type=int, default=Protocol.max_steps, help="cap on training steps (quick runs)")
    g.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    g.add_argument("--lr", type=float, default=Protocol.lr)
    g.add_argument("--max-length", type=int, default=Protocol.max_length)
    g.add_argument("--samples", type=int, default=Protocol.samples, help="posterior samples / MC dropout passes")
    g.add_argument("--ensemble-size", type=int, default=Protocol.ensemble_size)
    g.add_argument("--laplace-examples", type=int, default=Protocol.laplace_examples,
                   help="training examples for the Laplace curvature")
    g.add_argument("--ood", help="out-of-distribution task (default: one chosen per task; 'none' to skip)")


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
    _add_data_args(p, for_fit=True)
    _add_recipe_args(p)
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    p = sub.add_parser("evaluate", help="accuracy/NLL/Brier/ECE (or MSE) of a saved run")
    p.add_argument("run", help="run directory written by fit")
    _add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                   help=f"posterior samples K (default: {DEFAULT_SAMPLES}; also reports K=0, the mean)")
    p.add_argument("--out", help="JSON file to write (default: RUN/metrics-SPLIT.json)")

    p = sub.add_parser("predict", help="per-example predictions with uncertainty to CSV or JSON Lines")
    p.add_argument("run")
    _add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=DEFAULT_SAMPLES, help=f"posterior samples K (default: {DEFAULT_SAMPLES})")
    p.add_argument("--out", required=True, help="output file, .csv or .jsonl")

    p = sub.add_parser("demo", help="the main job: deterministic LoRA vs BH-PEFT on sentiment, with a report")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a few steps on small slices (for CI)")
    p.add_argument("--overwrite", action="store_true", default=True, help=argparse.SUPPRESS)

    p = sub.add_parser("compare", help="fit several inference schemes on the same data, steps and seeds; "
                                       "table, paired tests and figures")
    _add_compare_args(p)

    p = sub.add_parser("diagnose", help="Pareto k-hat, ArviZ summary and posterior plots of a fitted run")
    p.add_argument("run", help="run directory written by fit (mean-field or low-rank)")
    draws, examples = _default(diagnose, "draws"), _default(diagnose, "examples")
    p.add_argument("--draws", type=int, default=draws, help=f"posterior draws (default: {draws})")
    p.add_argument("--examples", type=int, default=examples, help="training examples whose log-likelihood, "
                   f"scaled to the full size, enters log p (default: {examples})")
    p.add_argument("--out", help="output directory (default: RUN/diagnostics)")

    p = sub.add_parser("update", help="a new round: fit new data with a previous run's posterior as prior")
    p.add_argument("--from", dest="parent", required=True, help="the previous round's run directory (only read)")
    _add_data_args(p, for_fit=True)
    p.add_argument("--temper", type=float, default=_default(posterior_prior, "temper"),
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
    return parser


def _peft_names(peft: Any) -> tuple[str, ...]:
    return peft.kinds


def _preset_defaults(name: str) -> dict[str, Any]:
    """A recipe preset as parser defaults: its PEFT config spelled as --peft and the part options."""
    from .recipe import PRESETS

    out = dict(PRESETS[name])
    peft = out.pop("peft", None)
    if peft is not None:
        out["peft"] = peft.kinds
        if peft.lora is not None:
            out.update(lora_r=peft.lora.r, lora_alpha=peft.lora.alpha, lora_targets=peft.lora.targets)
        if peft.adapter is not None:
            out["adapter_size"] = peft.adapter.bottleneck
        if peft.prefix is not None:
            out["prefix_length"] = peft.prefix.length
    return out


def _fields_from(cls: type, args: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that are options of this command, by name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.name not in skip and hasattr(args, f.name)}


def _recipe(args: argparse.Namespace):
    from .config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig
    from .recipe import Recipe

    from .peft import PEFT_KINDS

    unknown = set(args.peft) - set(PEFT_KINDS)
    if unknown or not args.peft:
        raise UserError(f"--peft {','.join(args.peft)}: choose a comma list of {', '.join(PEFT_KINDS)}")
    peft = PeftConfig(
        LoraConfig(r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets) if "lora" in args.peft else None,
        AdapterConfig(bottleneck=args.adapter_size) if "adapter" in args.peft else None,
        PrefixConfig(length=args.prefix_length) if "prefix" in args.peft else None)
    return Recipe(peft=peft, **_fields_from(Recipe, args, skip=("peft",)))


def _protocol(args: argparse.Namespace):
    from .compare import Protocol

    return Protocol(**_fields_from(Protocol, args), ood_task="" if args.ood == "none" else args.ood)


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
    from .recipe import train
    from .runs import run_meta, save_run

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UserError(f"{out} already holds a run; pass --overwrite to replace it or choose another --out")
    recipe, source = _recipe(args), _source(args)
    data = source.load()
    result = train(recipe, data, meta=None)
    result.posterior.meta.update(run_meta(recipe, source, data))
    save_run(out, result, overwrite=args.overwrite)
    print(f"fit: {result.summary()}; run saved to {out}")


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """Which data evaluate/predict score: ``--split`` of the run's data, or ``--data`` with column flags."""
    given = {k: v for k, v in _columns(args).items() if v is not None}
    if given and not args.data:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UserError(f"{flags} only apply to a --data FILE; drop them to use split {args.split!r} of the run's data")
    return {"split": args.split, "data_file": args.data, "columns": given}


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
    report = run_compare(_protocol(args), Path(args.out or f"runs/compare-{args.task}"), methods=args.methods,
                         seeds=range(args.seeds), overwrite=args.overwrite)
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


COMMANDS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo, "compare": cmd_compare,
            "diagnose": cmd_diagnose, "update": cmd_update, "history": cmd_history, "tasks": cmd_tasks}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``fit --recipe NAME`` the preset's values are the defaults the flags override."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None):
        parser.bhpeft_commands[args.command].set_defaults(**_preset_defaults(args.recipe))
        args = parser.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from .assets import AssetError
    from .backbone import BackboneError
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
    except KeyboardInterrupt:
        print(f"pyro-bhpeft {args.command}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
