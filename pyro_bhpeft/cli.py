"""The ``pyro-bhpeft`` command line: fit, evaluate, predict, demo, compare, update, meta-fit, ...

Every user error is one line on stderr naming the problem and the fix, with exit code 2. The parser is built
without torch and friends (``--help`` answers at once); each command imports what it needs
(:mod:`pyro_bhpeft.cli_commands`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .cli_options import (STATIC, UserError, add_compare_args, add_data_args, add_device_arg, add_recipe_args,
                          library_default, preset_defaults)

__all__ = ["main", "build_parser", "parse_args"]

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; builds without importing torch, pyro, transformers or datasets."""
    from .diagnose import diagnose
    from .recipe import Recipe

    parser = argparse.ArgumentParser(
        prog="pyro-bhpeft", description="Bayesian hybrid PEFT (LoRA, Adapter, prefix) of pretrained transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    samples = STATIC["samples"]

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
    p.add_argument("--samples", type=int, default=None,
                   help=f"posterior samples K (default: the run's recipe's, {samples} unless it predicts with the "
                        "posterior mean; also reports K=0, the mean)")
    p.add_argument("--out", help="JSON file to write (default: RUN/metrics-SPLIT.json; with --data, "
                                 "RUN/metrics-FILESTEM-HASH.json beside the run's own)")
    add_device_arg(p)

    p = sub.add_parser("predict", help="per-example predictions with uncertainty to CSV or JSON Lines (a "
                                       "language-model run: a generated answer per prompt, with its uncertainty)")
    p.add_argument("run")
    add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=None,
                   help=f"posterior samples K (default: the run's recipe's, {samples} unless it predicts with the "
                        "posterior mean)")
    p.add_argument("--out", required=True, help="output file, .csv or .jsonl")
    p.add_argument("--mode", choices=STATIC["modes"], default="auto",
                   help="how the draws become predictions: auto (the cheapest exact mode the run supports), "
                        "sample, closed-form (one forward, the head's Gaussian) or shared-trunk (default: auto)")
    new_tokens = STATIC["max_new_tokens"]
    p.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help=f"language-model runs: generate at most N tokens per answer (default: {new_tokens})")
    add_device_arg(p)

    p = sub.add_parser("bayesianize", help="add uncertainty to a LoRA adapter trained with the peft library, on "
                                           "your data: TFB on it (default) or a variational fit started and centred there")
    p.add_argument("adapter", help="a peft LoRA adapter folder (adapter_config.json + adapter_model.safetensors)")
    add_data_args(p, for_fit=True)
    p.add_argument("--backbone", help="the adapter's base model: alias, folder or hub id (default: the one it names)")
    p.add_argument("--method", choices=("tfb", "vi"), default="tfb",
                   help="tfb: fit the task head with the adapter fixed as start, then training-free Bayesianization; "
                        "vi: a mean-field fit started at the adapter, its prior centred there (default: tfb)")
    p.add_argument("--epochs", type=int, default=1, help="epochs of the head fit (tfb) or the variational fit (vi)")
    p.add_argument("--lr", type=float, default=Recipe.lr, help=f"learning rate (default: {Recipe.lr})")
    p.add_argument("--max-length", type=int, default=Recipe.max_length,
                   help=f"tokens per example (default: {Recipe.max_length})")
    p.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory to write (evaluate and predict read it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

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
    p.add_argument("--temper", type=float, default=STATIC["temper"],
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

    p = sub.add_parser("meta-fit", help="ABMLL: meta-learn a hierarchical prior over several multiple-choice tasks")
    p.add_argument("--tasks", required=True, help="comma list of registered multiple-choice tasks to meta-train on")
    p.add_argument("--out", required=True, help="run directory to write (its guide: a new task's prior predictive)")
    p.add_argument("--backbone", default="minilm")
    p.add_argument("--per-task", type=int, default=1000, help="random training examples per task (default: 1000)")
    p.add_argument("--max-length", type=int, default=64)
    for field_name, value in STATIC["meta"].items():
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


def parse_args(argv: Sequence[str] | None = None, preset: str | None = None) -> argparse.Namespace:
    """Parse ``argv``; with ``fit --recipe NAME`` (or ``preset``: the task kind's default, see
    :func:`~pyro_bhpeft.recipe.kind_default`) the preset's values are the defaults the flags override."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    name = getattr(args, "recipe", None) or preset
    if name:
        parser.bhpeft_commands[args.command].set_defaults(**preset_defaults(name))
        args = parser.parse_args(argv)
    args.argv = argv  # fit re-parses with its task kind's default once the data says the kind
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except UserError as err:
        print(f"pyro-bhpeft: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    from .assets import AssetError
    from .backbone import BackboneError
    from .checkpoint import FitInterrupted
    from .config import ConfigError
    from .data import DataError
    from .cli_commands import COMMANDS
    from .posterior import PosteriorError

    try:
        COMMANDS[args.command](args)
    except (UserError, ConfigError, DataError, PosteriorError, BackboneError, AssetError, FileExistsError,
            ValueError) as err:
        if os.environ.get("PYRO_BHPEFT_DEBUG"):
            raise
        print(f"pyro-bhpeft {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # a full disk, a folder made read-only while the command ran: what was saved is kept
        if os.environ.get("PYRO_BHPEFT_DEBUG"):
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"pyro-bhpeft {args.command}: error: could not read or write{where} ({err.strerror or err}); nothing "
              "half-written was kept: free space or choose another location", file=sys.stderr)
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
