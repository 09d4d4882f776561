"""The command line's options and how they become library values (a :class:`Recipe`, a :class:`Protocol`).

Defaults are read from the library's light dataclasses (Recipe, the PEFT configs); the few whose home imports
torch are in :data:`STATIC`, each checked against its home by a test. Registry names (guides, priors, PEFT kinds,
comparison methods, recipe presets) are checked after parsing against the registries, so the parser itself
imports no torch, pyro, transformers or datasets.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from typing import Any

__all__ = ["add_data_args", "add_recipe_args", "add_compare_args", "add_device_arg", "preset_defaults", "recipe_from",
           "protocol_from", "check_choices", "csv_list", "library_default", "UserError", "COLUMNS", "STATIC"]


class UserError(Exception):
    """A problem with the user's options: printed as one line, exit code 2."""


# The parser is built without torch, pyro, transformers or datasets (`pyro-bhpeft --help` answers at once), so
# the few values that live in heavy modules are written here; tests/test_cli.py checks each against its home.
# Registry names are checked after parsing, against the registries themselves (:func:`check_choices`).
COLUMNS = {"text_column": "text", "label_column": "label", "question_column": "question", "choices_column": "choices",
           "prompt_column": "prompt", "response_column": "response"}  # data.load_files' column arguments
STATIC = {
    "guides": ("mean-field", "low-rank", "map", "mle"),  # guides.GUIDES
    "scale_params": ("log", "softplus", "rho2"),  # guides.SCALE_PARAMS
    "peft": ("lora",),  # config.PeftConfig().kinds
    "peft_kinds": ("lora", "adapter", "prefix", "gated-lora", "delta"),  # layers.PEFT_KINDS
    "priors": ("normal", "laplace", "student-t", "fan-in", "learned", "flat", "blob",
               "function-space"),  # priors.PRIORS
    "gate_noises": ("logistic", "none"),  # layers.gates.NOISES
    "gate_defaults": {"rank_prior": 1.0, "bit_prior": -1.0, "noise": "logistic"},  # layers.gates.GatedLoraConfig
    "devices": ("auto", "cpu", "cuda", "mps"),  # backbone.DEVICES
    "samples": 8,  # predict.DEFAULT_SAMPLES
    "max_new_tokens": 16,  # language.generate's max_new_tokens
    "modes": ("auto", "sample", "closed-form", "shared-trunk"),  # modes.PREDICTIVE_MODES
    "temper": 1.0,  # continual.posterior_prior's temper
    "seeds": 3,  # len(compare.run_compare's seeds)
    "protocol": {"task": "sentiment", "backbone": "minilm", "train_size": 1000, "eval_size": 500, "epochs": 2,
                 "max_steps": None, "batch_size": 16, "lr": 0.002, "warmup_ratio": 0.0, "lr_decay": "none",
                 "max_length": 64, "samples": 8, "ensemble_size": 3, "laplace_examples": 256, "mc_scoring": "letters"},  # compare.Protocol
    "meta": {"steps": 200, "tasks_per_step": 2, "support": 16, "query": 16, "inner_steps": 5, "inner_lr": 0.1,
             "beta": 1.0, "gamma": 0.001, "lr": 0.001, "rank": 8, "c_ratio": 0.05, "seed": 0},  # meta.MetaConfig
}


def csv_list(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def library_default(fn: Any, name: str) -> Any:
    """The default of keyword ``name`` of ``fn``: the library, not the parser, holds it."""
    return inspect.signature(fn).parameters[name].default


def _one_of(names: Any) -> str:
    return ", ".join(names)


def add_data_args(p: argparse.ArgumentParser, *, for_fit: bool) -> None:
    g = p.add_argument_group("data (a registered task, or your own files)")
    if for_fit:
        g.add_argument("--task", help="registered task name (see `pyro-bhpeft tasks`)")
        g.add_argument("--train", help="your training file: .csv, .tsv, .jsonl or .parquet")
        g.add_argument("--eval", dest="eval_file", help="your test file: what `evaluate RUN` scores (default: 10 %% of "
                                                         "the train file is held out as test, 10 %% as validation)")
        g.add_argument("--kind", default=None, help="task kind, a registered one such as classification, regression, "
                       "multiple_choice (default: inferred from the label column, and said)")
        g.add_argument("--max-examples", type=int, help="cap every split of a --task at N rows (quick runs)")
        g.add_argument("--train-size", type=int, help="train on N training rows drawn at random (seed 0)")
        g.add_argument("--drop-unseen", action="store_true",
                       help="with --eval: leave out its rows whose label is a class the training file lacks")
    else:
        g.add_argument("--split", default="test", help="split of the run's own data (default: test)")
        g.add_argument("--data", help="a file to use instead, read with the run's column names")
        g.add_argument("--drop-unseen", action="store_true",
                       help="with --data: leave out rows whose label is a class the run was not fitted on")
    g.add_argument("--delimiter", help="column delimiter of .csv/.tsv/.txt files, e.g. ';' or '\\t' (default: sniffed)")
    for name, default in COLUMNS.items():  # None: not given (evaluate/predict then use the run's own)
        flag, what = "--" + name.replace("_", "-"), name.removesuffix("_column")
        g.add_argument(flag, help=f"column holding the {what} (default: " + (
            f"{default})" if for_fit else f"the run's own, else {default}; with --data only)"))


MC_SCORING_HELP = ("multiple choice on a causal LM: the answer letters' next-token logits (letters), or each "
                   "choice's own token log-likelihood after the question, summed (cloze) or per token (cloze-mean), "
                   "one posterior draw shared by a question's choices (default: letters)")


def add_recipe_args(p: argparse.ArgumentParser) -> None:
    from .config import AdapterConfig, LoraConfig, PrefixConfig
    from .recipe import DTYPE_NAMES, KIND_DEFAULTS, LR_DECAYS, MC_SCORINGS, PRESET_NAMES, Recipe

    g = p.add_argument_group("model and inference")
    g.add_argument("--backbone", default=Recipe.backbone,
                   help=f"packaged alias (minilm, mpnet, smollm2), local folder or hub id (default: {Recipe.backbone})")
    g.add_argument("--recipe", help="start from a named recipe (its values become the defaults of every option "
                   f"below): {_one_of(PRESET_NAMES)}; without it, "
                   + "; ".join(f"a {kind} task starts from {name}" for kind, name in KIND_DEFAULTS.items())
                   + " (chosen on validation by the default-recipe suite), any other from mean-field-lora")
    peft = ",".join(STATIC["peft"])
    g.add_argument("--peft", default=peft, type=csv_list,
                   help=f"PEFT parts, a comma list of {_one_of(STATIC['peft_kinds'])} (default: {peft})")
    g.add_argument("--lora-r", type=int, default=LoraConfig.r)
    g.add_argument("--lora-alpha", type=float, default=LoraConfig.lora_alpha)
    g.add_argument("--lora-targets", type=csv_list, default=LoraConfig.target_modules)
    g.add_argument("--adapter-size", type=int, default=AdapterConfig.bottleneck, help="adapter bottleneck width")
    g.add_argument("--prefix-length", type=int, default=PrefixConfig.length)
    gates = STATIC["gate_defaults"]
    g.add_argument("--rank-prior", type=float, default=gates["rank_prior"],
                   help="gated LoRA: prior mean of the rank-gate logits (lower: fewer components)")
    g.add_argument("--bit-prior", type=float, default=gates["bit_prior"],
                   help="gated LoRA: prior mean of the bit-gate logits (lower: fewer bits)")
    g.add_argument("--gate-noise", choices=STATIC["gate_noises"], default=gates["noise"],
                   help="gated LoRA: relaxation noise on the gate logits while fitting")
    g.add_argument("--prior", default=Recipe.prior,
                   help=f"one of {_one_of(STATIC['priors'])} (default: {Recipe.prior})")
    g.add_argument("--prior-scale", type=float, default=Recipe.prior_scale)
    g.add_argument("--guide", default=Recipe.guide, help=f"posterior family: {_one_of(STATIC['guides'])} "
                   f"(default: {Recipe.guide}; map/mle: point estimates)")
    g.add_argument("--rank", type=int, default=Recipe.rank, help="rank of the low-rank guide")
    g.add_argument("--init-scale", type=float, default=Recipe.init_scale, help="initial posterior standard deviation")
    g.add_argument("--init-scale-high", type=float, default=Recipe.init_scale_high,
                   help="draw each initial scale between --init-scale and this")
    g.add_argument("--scale-param", default=Recipe.scale_param, help="how mean-field scales are parameterised: "
                   f"{_one_of(STATIC['scale_params'])} (log: scale-free steps; rho2: BLoB's)")
    g.add_argument("--deterministic", type=csv_list, default=Recipe.deterministic,
                   help="comma list of site-name globs kept point masses, e.g. '*.lora_B,head.*'")
    g.add_argument("--kl-weight", type=float, default=Recipe.kl_weight)
    g.add_argument("--kl-anneal-steps", type=int, default=Recipe.kl_anneal_steps)
    g.add_argument("--kl-step-lr", type=float, default=Recipe.kl_step_lr,
                   help="BLoB's separate SGD step on the KL term at this rate (default: one joint step)")
    g.add_argument("--kl-reweighting", default=Recipe.kl_reweighting, choices=("blob", "uniform"))
    g.add_argument("--flipout", action=argparse.BooleanOptionalAction, default=Recipe.flipout,
                   help="decorrelate LoRA A's noise across the examples of a batch (mean-field)")
    g.add_argument("--mc-scoring", choices=MC_SCORINGS, default=Recipe.mc_scoring, help=MC_SCORING_HELP)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=Recipe.epochs)
    t.add_argument("--max-steps", type=int, default=Recipe.max_steps, help="cap on training steps (within --epochs)")
    t.add_argument("--batch-size", type=int, default=Recipe.batch_size)
    t.add_argument("--lr", type=float, default=Recipe.lr)
    t.add_argument("--scale-lr", type=float, default=Recipe.scale_lr,
                   help="learning rate of posterior scales (default: --lr)")
    t.add_argument("--gate-lr", type=float, default=Recipe.gate_lr,
                   help="learning rate of gated LoRA's gate logits (default: --lr)")
    t.add_argument("--dtype", choices=DTYPE_NAMES, default=Recipe.dtype,
                   help="precision of the frozen backbone (PEFT weights, KL and likelihood stay float32)")
    t.add_argument("--warmup-ratio", type=float, default=Recipe.warmup_ratio,
                   help="fraction of the steps with a linear learning-rate warm-up (default: none)")
    t.add_argument("--lr-decay", choices=LR_DECAYS, default=Recipe.lr_decay,
                   help="learning-rate decay after the warm-up (default: none)")
    t.add_argument("--max-length", type=int, default=Recipe.max_length)
    t.add_argument("--seed", type=int, default=Recipe.seed)
    t.add_argument("--predict-samples", type=int, default=Recipe.predict_samples, metavar="K",
                   help="posterior draws evaluate and predict take by default for this run (0: one forward at the "
                        f"posterior mean; default: {STATIC['samples']})")


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=STATIC["devices"], default="auto",
                   help="where to compute (default: auto, a GPU when there is one, else the CPU)")


def add_compare_args(p: argparse.ArgumentParser) -> None:
    from .recipe import LR_DECAYS, MC_SCORINGS

    d = STATIC["protocol"]
    p.add_argument("--task", default=d["task"], help=f"registered task (default: {d['task']})")
    p.add_argument("--methods", type=csv_list, default=None,
                   help="comma list of comparison methods (default: every library method the installed extras "
                        "allow, saying which it skips; an unknown name lists them)")
    p.add_argument("--seeds", type=int, default=STATIC["seeds"],
                   help=f"number of seeds, 0..N-1 (default: {STATIC['seeds']})")
    p.add_argument("--out", help="comparison directory (default: runs/compare-TASK); finished cells are reused")
    p.add_argument("--overwrite", action="store_true", help="discard a comparison made under another protocol")
    w = p.add_argument_group("workers (Ray; pip install 'pyro-bhpeft[ray]')")
    w.add_argument("--workers", type=int, default=1, help="cells run at once on a local Ray (default: 1, no Ray)")
    w.add_argument("--ray-address", help="run the cells on the Ray cluster at this address (e.g. auto)")
    w.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (threads) per cell (default: 1)")
    w.add_argument("--gpus-per-worker", type=float, default=0,
                   help="GPUs Ray reserves per cell (default: 0); the cells' models still run on the CPU: the "
                        "comparison has no GPU path yet")
    g = p.add_argument_group("protocol (the same for every method)")
    g.add_argument("--backbone", default=d["backbone"])
    g.add_argument("--train-size", type=int, default=d["train_size"],
                   help="N training examples drawn at random (seed 0)")
    g.add_argument("--eval-size", type=int, default=d["eval_size"],
                   help="N test / validation / OOD examples drawn at random (seed 0)")
    g.add_argument("--epochs", type=int, default=d["epochs"])
    g.add_argument("--max-steps", type=int, default=d["max_steps"], help="cap on training steps (quick runs)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"])
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--warmup-ratio", type=float, default=d["warmup_ratio"],
                   help="fraction of the steps with a linear learning-rate warm-up (default: none)")
    g.add_argument("--lr-decay", choices=LR_DECAYS, default=d["lr_decay"],
                   help="learning-rate decay after the warm-up (default: none)")
    g.add_argument("--max-length", type=int, default=d["max_length"])
    g.add_argument("--samples", type=int, default=d["samples"], help="posterior samples / MC dropout passes")
    g.add_argument("--ensemble-size", type=int, default=d["ensemble_size"])
    g.add_argument("--laplace-examples", type=int, default=d["laplace_examples"],
                   help="training examples for the Laplace curvature")
    g.add_argument("--mc-scoring", choices=MC_SCORINGS, default=d["mc_scoring"], help=MC_SCORING_HELP)
    g.add_argument("--ood", help="out-of-distribution task (default: one chosen per task; 'none' to skip)")


def check_choices(args: argparse.Namespace) -> None:
    """The registry-named options of a parsed command line, checked against the registries (which a plug-in
    may have extended): one line naming the choices."""
    checks = []
    if getattr(args, "guide", None) is not None and getattr(args, "command", None) == "fit":
        from .guides import GUIDES, SCALE_PARAMS
        from .priors import PRIORS

        checks += [("--guide", args.guide, GUIDES.names()), ("--prior", args.prior, PRIORS.names()),
                   ("--scale-param", args.scale_param, list(SCALE_PARAMS))]
    if getattr(args, "kind", None) is not None:
        from .data.types import DATA_KINDS

        checks.append(("--kind", args.kind, DATA_KINDS.names()))
    for flag, value, names in checks:
        if value not in names:
            raise UserError(f"{flag} {value}: choose one of {_one_of(names)}")


def _peft_names(peft: Any) -> tuple[str, ...]:
    return peft.kinds


def preset_defaults(name: str) -> dict[str, Any]:
    """A recipe preset as parser defaults: its PEFT config spelled as --peft and the part options."""
    from .recipe import PRESETS

    if name not in PRESETS.names():
        raise UserError(f"--recipe {name}: choose one of {_one_of(PRESETS.names())}")
    out = dict(PRESETS[name])
    peft = out.pop("peft", None)
    if peft is not None:
        out["peft"] = peft.kinds
        if peft.lora is not None:
            out.update(lora_r=peft.lora.r, lora_alpha=peft.lora.lora_alpha, lora_targets=peft.lora.target_modules)
        if peft.adapter is not None:
            out["adapter_size"] = peft.adapter.bottleneck
        if peft.prefix is not None:
            out["prefix_length"] = peft.prefix.length
        gated = peft.get("gated-lora")
        if gated is not None:
            out.update(lora_r=gated.r, lora_alpha=gated.lora_alpha, lora_targets=gated.target_modules,
                       rank_prior=gated.rank_prior, bit_prior=gated.bit_prior, gate_noise=gated.noise)
    return out


def _fields_from(cls: type, args: argparse.Namespace, *, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of dataclass ``cls`` that are options of this command, by name."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
            if f.name not in skip and hasattr(args, f.name)}


def recipe_from(args: argparse.Namespace):
    from .config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig
    from .recipe import Recipe

    from .layers import PEFT_KINDS

    unknown = set(args.peft) - set(PEFT_KINDS)
    if unknown or not args.peft:
        raise UserError(f"--peft {','.join(args.peft)}: choose a comma list of {', '.join(PEFT_KINDS)}")
    lora_options = {"r": args.lora_r, "lora_alpha": args.lora_alpha, "target_modules": args.lora_targets}
    shared = {**lora_options, "rank_prior": args.rank_prior, "bit_prior": args.bit_prior, "noise": args.gate_noise}
    others = {}  # other registered kinds: their defaults, with the --lora-* and gate options they have fields for
    for name in args.peft:
        if name not in ("lora", "adapter", "prefix"):
            fields = {f.name for f in dataclasses.fields(PEFT_KINDS[name].config)}
            others[name] = PEFT_KINDS[name].config(**{k: v for k, v in shared.items() if k in fields})
    peft = PeftConfig(
        LoraConfig(**lora_options) if "lora" in args.peft else None,
        AdapterConfig(bottleneck=args.adapter_size) if "adapter" in args.peft else None,
        PrefixConfig(length=args.prefix_length) if "prefix" in args.peft else None, **others)
    return Recipe(peft=peft, **_fields_from(Recipe, args, skip=("peft",)))


def protocol_from(args: argparse.Namespace):
    from .compare import Protocol

    return Protocol(**_fields_from(Protocol, args), ood_task="" if args.ood == "none" else args.ood)
