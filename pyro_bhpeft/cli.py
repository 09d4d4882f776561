"""The ``pyro-bhpeft`` command line: fit, evaluate, predict, demo.

Every user error is one line on stderr naming the problem and the fix, with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _add_data_args(p: argparse.ArgumentParser, *, for_fit: bool) -> None:
    g = p.add_argument_group("data (a registered task, or your own files)")
    if for_fit:
        g.add_argument("--task", help="registered task name (see `pyro-bhpeft tasks`)")
        g.add_argument("--train", help="your training file: .csv, .jsonl or .parquet")
        g.add_argument("--eval", dest="eval_file", help="your evaluation file (default: split off the train file)")
        g.add_argument("--kind", default="classification", choices=("classification", "multiple_choice", "regression"))
        g.add_argument("--max-examples", type=int, help="cap every split at N rows (quick runs)")
        g.add_argument("--train-size", type=int, help="train on N training rows drawn at random (seed 0)")
    else:
        g.add_argument("--split", default="test", help="split of the run's own data (default: test)")
        g.add_argument("--data", help="a file to use instead, with the run's column names")
    g.add_argument("--text-column", default="text")
    g.add_argument("--label-column", default="label")
    g.add_argument("--question-column", default="question")
    g.add_argument("--choices-column", default="choices")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and inference")
    g.add_argument("--backbone", default="minilm", help="packaged alias, local folder or hub id (default: minilm)")
    g.add_argument("--peft", default="lora", type=_csv, help="PEFT parts, any of lora,adapter,prefix (default: lora)")
    g.add_argument("--lora-r", type=int, default=8)
    g.add_argument("--lora-alpha", type=float, default=16.0)
    g.add_argument("--lora-targets", type=_csv, default=("query", "value"))
    g.add_argument("--adapter-size", type=int, default=16, help="adapter bottleneck width")
    g.add_argument("--prefix-length", type=int, default=8)
    g.add_argument("--prior", default="normal", choices=("normal", "laplace", "student-t"))
    g.add_argument("--prior-scale", type=float, default=1.0)
    g.add_argument("--guide", default="mean-field", choices=("mean-field", "low-rank", "map", "mle"),
                   help="posterior family; map/mle are the deterministic baselines")
    g.add_argument("--rank", type=int, default=8, help="rank of the low-rank guide")
    g.add_argument("--init-scale", type=float, default=1e-2, help="initial posterior standard deviation")
    g.add_argument("--kl-weight", type=float, default=1.0)
    g.add_argument("--kl-anneal-steps", type=int, default=0)
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--scale-lr", type=float, help="learning rate of posterior scales (default: --lr)")
    t.add_argument("--max-length", type=int, default=64)
    t.add_argument("--seed", type=int, default=0)


def _add_compare_args(p: argparse.ArgumentParser) -> None:
    from .compare import DEFAULT_METHODS, METHODS, Protocol

    p.add_argument("--task", default=Protocol.task, help=f"registered task (default: {Protocol.task})")
    p.add_argument("--methods", type=_csv, default=DEFAULT_METHODS,
                   help=f"comma list of {', '.join(METHODS)} (default: all)")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default: 3)")
    p.add_argument("--out", help="comparison directory (default: runs/compare-TASK); finished cells are reused")
    p.add_argument("--overwrite", action="store_true", help="discard a comparison made under another protocol")
    g = p.add_argument_group("protocol (the same for every method)")
    g.add_argument("--backbone", default=Protocol.backbone)
    g.add_argument("--train-size", type=int, default=Protocol.train_size, help="N training examples drawn at random (seed 0)")
    g.add_argument("--eval-size", type=int, default=Protocol.eval_size,
                   help="N test / validation / OOD examples drawn at random (seed 0)")
    g.add_argument("--epochs", type=int, default=Protocol.epochs)
    g.add_argument("--max-steps", type=int, help="cap on training steps (quick runs)")
    g.add_argument("--batch-size", type=int, default=Protocol.batch_size)
    g.add_argument("--lr", type=float, default=Protocol.lr)
    g.add_argument("--max-length", type=int, default=Protocol.max_length)
    g.add_argument("--samples", type=int, default=Protocol.samples, help="posterior samples / MC dropout passes")
    g.add_argument("--ensemble-size", type=int, default=Protocol.ensemble_size)
    g.add_argument("--laplace-examples", type=int, default=Protocol.laplace_examples,
                   help="training examples for the Laplace curvature")
    g.add_argument("--ood", help="out-of-distribution task (default: one chosen per task; 'none' to skip)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-bhpeft", description="Bayesian hybrid PEFT (LoRA, Adapter, prefix) of pretrained transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="fit a posterior on a task or your files; writes a run directory")
    _add_data_args(p, for_fit=True)
    _add_recipe_args(p)
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    p = sub.add_parser("evaluate", help="accuracy/NLL/Brier/ECE (or MSE) of a saved run")
    p.add_argument("run", help="run directory written by fit")
    _add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=16, help="posterior samples K (also reports K=0, the mean)")
    p.add_argument("--out", help="JSON file to write (default: RUN/metrics-SPLIT.json)")

    p = sub.add_parser("predict", help="per-example predictions with uncertainty to CSV or JSON Lines")
    p.add_argument("run")
    _add_data_args(p, for_fit=False)
    p.add_argument("--samples", type=int, default=16)
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
    p.add_argument("--draws", type=int, default=100, help="posterior draws (default: 100)")
    p.add_argument("--examples", type=int, default=256,
                   help="training examples whose log-likelihood, scaled to the full size, enters log p (default: 256)")
    p.add_argument("--out", help="output directory (default: RUN/diagnostics)")

    p = sub.add_parser("update", help="a new round: fit new data with a previous run's posterior as prior")
    p.add_argument("--from", dest="parent", required=True, help="the previous round's run directory (only read)")
    _add_data_args(p, for_fit=True)
    p.add_argument("--temper", type=float, default=1.0,
                   help="forgetting factor: multiplies every prior variance (default 1: exact updating)")
    p.add_argument("--epochs", type=int, help="default: the parent's")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float, help="default: the parent's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory for the new round")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("history", help="the chain of rounds that led to a run")
    p.add_argument("run")

    sub.add_parser("tasks", help="list the registered tasks")
    return parser


def _recipe(args: argparse.Namespace):
    from .config import AdapterConfig, LoraConfig, PeftConfig, PrefixConfig
    from .recipe import Recipe

    unknown = set(args.peft) - {"lora", "adapter", "prefix"}
    if unknown or not args.peft:
        raise UserError(f"--peft {','.join(args.peft)}: choose a comma list of lora, adapter, prefix")
    peft = PeftConfig(
        LoraConfig(r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets) if "lora" in args.peft else None,
        AdapterConfig(bottleneck=args.adapter_size) if "adapter" in args.peft else None,
        PrefixConfig(length=args.prefix_length) if "prefix" in args.peft else None)
    return Recipe(backbone=args.backbone, peft=peft, prior=args.prior, prior_scale=args.prior_scale,
                  guide=args.guide, rank=args.rank, init_scale=args.init_scale, kl_weight=args.kl_weight,
                  kl_anneal_steps=args.kl_anneal_steps, epochs=args.epochs, max_steps=args.max_steps,
                  batch_size=args.batch_size, lr=args.lr, scale_lr=args.scale_lr, max_length=args.max_length,
                  seed=args.seed)


def _columns(args: argparse.Namespace) -> dict[str, str]:
    return {"text_column": args.text_column, "label_column": args.label_column,
            "question_column": args.question_column, "choices_column": args.choices_column}


def _source(args: argparse.Namespace):
    from .runs import DataSource

    if bool(args.task) == bool(args.train):
        raise UserError("give either --task NAME or --train FILE (see `pyro-bhpeft tasks`)")
    if args.task:
        source = DataSource(task=args.task, max_examples=args.max_examples, seed=args.seed)
    else:
        evals = {"validation": args.eval_file} if args.eval_file else None
        source = DataSource(train=str(Path(args.train).resolve()), eval_files=evals, kind=args.kind,
                            columns=_columns(args))
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
    print(f"fit: {result.steps} steps in {result.seconds:.0f} s, final loss {result.final_loss:.4f}; run saved to {out}")


def _eval_data(args: argparse.Namespace, meta: dict[str, Any]):
    """The data to evaluate on (checked before any model is loaded) and the split to use."""
    from .data import load_files
    from .runs import DataSource

    if args.data:
        data = load_files(args.data, eval_files={"validation": args.data, "test": args.data}, kind=meta["kind"],
                          label_names=meta.get("label_names") or None, **_columns(args))
        return data, "test"
    data = DataSource(meta["source"]).load()
    if args.split not in data.splits:
        raise UserError(f"split {args.split!r} does not exist; this run's data has {', '.join(data.splits)}")
    return data, args.split


def _load_for_eval(args: argparse.Namespace):
    """(posterior, meta, data, split, loader) for evaluate and predict."""
    from .backbone import load_backbone
    from .data import make_loader, tokenize
    from .posterior import read_config
    from .recipe import Recipe
    from .runs import load_run

    meta = read_config(args.run).get("meta", {})
    data, split = _eval_data(args, meta)
    posterior, _ = load_run(args.run)
    tokenizer = load_backbone(posterior.backbone_name).tokenizer
    max_length = Recipe.from_dict(meta["recipe"]).max_length
    return posterior, meta, data, split, make_loader(tokenize(data, tokenizer, max_length)[split], 64)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .io import write_json
    from .runs import evaluate_split

    posterior, _, _, split, loader = _load_for_eval(args)
    results = {"split": split, "samples": evaluate_split(posterior, loader, args.samples),
               "mean_only": evaluate_split(posterior, loader, 0)}
    out = Path(args.out) if args.out else Path(args.run) / f"metrics-{split}.json"
    write_json(out, results)
    print(json.dumps(results, indent=2))
    print(f"metrics written to {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .io import write_text
    from .predict import predict

    if Path(args.out).suffix not in (".csv", ".jsonl"):
        raise UserError(f"--out {args.out}: use a .csv or .jsonl file name")
    posterior, meta, data, split, loader = _load_for_eval(args)
    pred = predict(posterior, loader, num_samples=args.samples)
    rows = _prediction_rows(pred, data.splits[split], meta)
    if args.out.endswith(".jsonl"):
        write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pandas as pd

        write_text(args.out, pd.DataFrame(rows).to_csv(index=False))
    print(f"{len(rows)} predictions written to {args.out}")


def _prediction_rows(pred, split, meta: dict[str, Any]) -> list[dict[str, Any]]:
    text_col = "text" if "text" in split.column_names else "question"
    texts = split[text_col]
    if meta["kind"] == "regression":
        return [{"text": t, "label": float(y), "mean": float(m), "std": float(v) ** 0.5,
                 "epistemic_var": float(e)} for t, y, m, v, e in
                zip(texts, pred.labels, pred.mean, pred.variance, pred.epistemic)]
    names = meta.get("label_names") or [str(i) for i in range(pred.probs.shape[1])]
    rows = []
    for i, t in enumerate(texts):
        row = {"text": t, "label": int(pred.labels[i]) if pred.labels is not None else None,
               "predicted": int(pred.predicted[i]), "predicted_name": names[int(pred.predicted[i])]
               if len(names) == pred.probs.shape[1] else None,
               "confidence": float(pred.probs[i].max()), "entropy": float(pred.predictive_entropy[i]),
               "mutual_information": float(pred.mutual_information[i])}
        row.update({f"p_{j}": float(p) for j, p in enumerate(pred.probs[i])})
        rows.append(row)
    return rows


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
    from .runs import lineage

    for entry in lineage(args.run):
        data = entry["data"] or {}
        prior = entry["prior_from"]
        line = (f"round {entry['round']}: {entry['run']}  data={data.get('name')} n={data.get('size')} "
                f"hash={data.get('hash')}  guide={entry['guide']}  "
                f"prior={'base' if not prior else 'posterior of round before (temper %g)' % prior['temper']}")
        for name, m in entry["metrics"].items():
            s = m.get("samples", m)
            line += f"\n    {name}: " + ", ".join(f"{k}={v:.4g}" for k, v in s.items() if isinstance(v, float))
        print(line)


def cmd_tasks(args: argparse.Namespace) -> None:
    from .data import TASKS

    for name, spec in TASKS.items():
        print(f"{name:16s} {spec.kind:16s} {spec.description}")


def cmd_compare(args: argparse.Namespace) -> None:
    from .compare import Protocol, run_compare

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    protocol = Protocol(task=args.task, backbone=args.backbone, train_size=args.train_size, eval_size=args.eval_size,
                        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                        samples=args.samples, ensemble_size=args.ensemble_size, laplace_examples=args.laplace_examples,
                        ood_task="" if args.ood == "none" else args.ood, max_steps=args.max_steps)
    report = run_compare(protocol, Path(args.out or f"runs/compare-{args.task}"), methods=args.methods,
                         seeds=range(args.seeds), overwrite=args.overwrite)
    print(f"comparison written to {report}")


def cmd_diagnose(args: argparse.Namespace) -> None:
    from .diagnose import diagnose

    report = diagnose(args.run, args.out, draws=args.draws, examples=args.examples)
    facts = json.loads((report.parent / "diagnostics.json").read_text())
    verdict = "trustworthy" if facts["reliable"] else "NOT trustworthy (k >= 0.7)"
    print(f"Pareto k-hat {facts['pareto_khat']:.2f}: {verdict}; report written to {report}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick)
    print(f"report written to {report}")


COMMANDS = {"fit": cmd_fit, "evaluate": cmd_evaluate, "predict": cmd_predict, "demo": cmd_demo, "compare": cmd_compare,
            "diagnose": cmd_diagnose, "update": cmd_update, "history": cmd_history, "tasks": cmd_tasks}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
