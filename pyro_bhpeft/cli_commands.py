"""What each ``pyro-bhpeft`` command does once its options are parsed (see :mod:`pyro_bhpeft.cli`).

Heavy libraries (torch, pyro, transformers, datasets) are imported inside the command that needs them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any

from .cli_options import COLUMNS, UserError, check_choices, protocol_from, recipe_from

__all__ = ["COMMANDS"]


def _columns(args: argparse.Namespace) -> dict[str, str | None]:
    """The column flags as given (None where not given)."""
    return {name: getattr(args, name) for name in COLUMNS}


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def _source(args: argparse.Namespace, parent: dict[str, Any] | None = None):
    """Where the fit's data comes from; ``update`` passes its ``parent``'s meta, whose columns and kind it reuses."""
    from .runs import DataSource, file_columns

    if bool(args.task) == bool(args.train):
        raise UserError("give either --task NAME or --train FILE (see `pyro-bhpeft tasks`)")
    if args.task:
        source = DataSource(task=args.task, max_examples=args.max_examples, seed=args.seed)
    else:
        parent = parent or {}
        saved = (parent.get("source") or {}).get("columns")
        kind = args.kind or parent.get("kind")
        source = DataSource(train=_absolute(args.train), kind=kind, columns=file_columns(_columns(args), saved))
        if args.eval_file:
            source["eval_files"] = {"test": _absolute(args.eval_file)}
        if getattr(args, "delimiter", None):
            source["delimiter"] = args.delimiter
        if args.drop_unseen:
            source["drop_unseen"] = True
    if args.train_size is not None:
        if args.train_size < 1:
            raise UserError(f"--train-size must be a positive integer, got {args.train_size}")
        source.update(train_size=args.train_size, subset_seed=0)
    return source


def _notes(args: argparse.Namespace, recipe: Any, source: dict[str, Any], data: Any,
           full_train: int | None) -> list[str]:
    """One line for every option the data or the schedule caps or ignores, and one saying what was held out."""
    notes = list(getattr(data, "notes", ())) + [f"warning: {w}" for w in getattr(data, "warnings", ())]
    if args.train and args.max_examples is not None:
        notes.append("--max-examples applies to a --task only; ignored for --train (use --train-size)")
    if args.task:
        given = {"--eval": args.eval_file, "--kind": args.kind, "--delimiter": args.delimiter,
                 **{"--" + k.replace("_", "-"): v for k, v in _columns(args).items() if v != COLUMNS[k]}}
        for flag in (flag for flag, value in given.items() if value):
            notes.append(f"{flag} applies to --train files only; ignored for --task {args.task}")
    n = len(data.splits["train"])
    if args.train_size is not None and full_train is not None and args.train_size > full_train:
        notes.append(f"--train-size {args.train_size} is capped at the {full_train} training rows there are")
    per_epoch = math.ceil(n / recipe.batch_size)
    total = recipe.epochs * per_epoch
    if recipe.max_steps is not None and recipe.max_steps > total:
        notes.append(f"--max-steps {recipe.max_steps} is capped at {total} steps: {recipe.epochs} epoch(s) of "
                     f"{per_epoch} batches of {n} rows; raise --epochs to train longer")
    steps = min(total, recipe.max_steps or total)
    every = getattr(args, "checkpoint_every", 0)
    if every and every >= steps:
        notes.append(f"--checkpoint-every {every} is never reached in {steps} steps (Ctrl-C still saves one)")
    sources = getattr(data, "sources", {}) or {}
    if "test" in sources:
        notes.append(f"`evaluate RUN` will score {sources['test'].describe('test')}")
    return notes


def cmd_fit(args: argparse.Namespace) -> None:
    from .cli_checks import OutputLock, check_checkpoint, check_max_length, check_output, check_writable

    out = check_output(args.out, overwrite=args.overwrite)
    if args.checkpoint_every < 0:
        raise UserError(f"--checkpoint-every must be a number of steps >= 0, got {args.checkpoint_every}")
    check_choices(args)
    if Path(args.backbone).expanduser().exists():  # a local folder: recorded absolute, so the run loads from anywhere
        args.backbone = _absolute(args.backbone)
    recipe, source = recipe_from(args), _source(args)
    from .backbone import resolve_device
    from .distributed import init_from_env, is_main
    from .runs import fit_run

    device = resolve_device(args.device)
    init_from_env(device)
    main_rank = is_main()
    if main_rank:
        check_writable(out)
    with OutputLock(out) if main_rank else contextlib.nullcontext():
        if main_rank:
            check_checkpoint(out, resume=args.resume, overwrite=args.overwrite)
        check_max_length(recipe.backbone, recipe.max_length)
        data = source.load()
        recipe, chosen = _kind_recipe(args, recipe, data.spec.kind)
        full = _train_rows(source) if source.get("train_size") else None
        for line in [*chosen, *_notes(args, recipe, source, data, full)] if main_rank else ():
            print(f"fit: {line}", file=sys.stderr)
        result = fit_run(recipe, data, out, source=source, overwrite=args.overwrite,
                         checkpoint_every=args.checkpoint_every, resume=args.resume, device=device)
    if main_rank:
        print(f"fit: {result.summary()}; run saved to {out}")


def _kind_recipe(args: argparse.Namespace, recipe: Any, kind: str) -> tuple[Any, list[str]]:
    """``(recipe, [])``, or without ``--recipe`` on a task kind with a default of its own (a regression) that
    preset under the flags given, as ``--recipe`` would (:func:`~pyro_bhpeft.recipe.kind_default`), and the line
    that says so."""
    from .cli import parse_args
    from .recipe import kind_default

    preset = None if args.recipe else kind_default(kind)
    if preset is None:
        return recipe, []
    again = parse_args(args.argv, preset=preset)
    again.backbone = args.backbone  # made absolute above
    check_choices(again)
    return recipe_from(again), [f"a {kind} task: recipe {preset} (the default there, chosen on validation by the "
                                "default-recipe suite, docs/results/suite.md); --recipe NAME starts from another"]


def _train_rows(source: dict[str, Any]) -> int:
    """The training rows before ``--train-size`` drew its subset."""
    from .runs import DataSource

    whole = DataSource({k: v for k, v in source.items() if k not in ("train_size", "subset_seed")})
    return len(whole.load().splits["train"])


def _where(args: argparse.Namespace) -> dict[str, Any]:
    """Which data evaluate/predict score: ``--split`` of the run's data, or ``--data`` with column flags."""
    if args.samples is not None and args.samples < 0:
        raise UserError(f"--samples must be >= 0 (0: the posterior mean alone), got {args.samples}")
    given = {k: v for k, v in _columns(args).items() if v is not None}
    if (given or args.delimiter or args.drop_unseen) and not args.data:
        flags = ", ".join("--" + k.replace("_", "-") for k in given) or (
            "--delimiter" if args.delimiter else "--drop-unseen")
        raise UserError(f"{flags} only apply to a --data FILE; drop them to use split {args.split!r} of the run's data")
    where = {"split": args.split, "data_file": _absolute(args.data), "columns": given, "device": args.device,
             "tell": lambda line: print(f"{args.command}: {line}", file=sys.stderr)}
    if args.data:
        where.update(delimiter=args.delimiter, drop_unseen=args.drop_unseen)
    return where


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .io import write_json
    from .runs import evaluate_run, file_fingerprint

    where = _where(args)
    results = evaluate_run(args.run, samples=args.samples, **where)
    if args.data:  # another file's metrics: beside the run's own, never over them
        results["data_file"] = where["data_file"]
        default = f"metrics-{Path(args.data).stem}-{file_fingerprint(args.data)['sha256'][:8]}.json"
    else:
        default = f"metrics-{results['split']}.json"
    out = Path(args.out) if args.out else Path(args.run) / default
    write_json(out, results)
    print(json.dumps(results, indent=2))
    print(f"metrics written to {out}")


def cmd_predict(args: argparse.Namespace) -> None:
    from .io import write_rows
    from .posterior import read_config
    from .runs import predict_run

    if Path(args.out).suffix not in (".csv", ".jsonl"):
        raise UserError(f"--out {args.out}: use a .csv or .jsonl file name")
    config = read_config(args.run)
    if ((config.get("meta") or {}).get("kind") or config.get("task")) == "language_model":
        rows = _answers(args, config)
    else:
        if args.max_new_tokens is not None:
            print("predict: --max-new-tokens applies to language-model runs only; ignored", file=sys.stderr)
        rows = predict_run(args.run, samples=args.samples, mode=args.mode, **_where(args))
    write_rows(args.out, rows)
    print(f"{len(rows)} predictions written to {args.out}")


def _answers(args: argparse.Namespace, config: dict[str, Any]) -> list[dict[str, Any]]:
    """A language-model run's predictions: a greedy answer per prompt under the posterior mean, with its
    likelihood and uncertainty under ``--samples`` draws (:func:`~pyro_bhpeft.language.generate`), scored
    against the gold response where the data has one (:func:`~pyro_bhpeft.language.generation_rows`)."""
    from .cli_options import STATIC

    where = _where(args)
    new_tokens = STATIC["max_new_tokens"] if args.max_new_tokens is None else args.max_new_tokens
    if new_tokens < 1:
        raise UserError(f"--max-new-tokens must be a positive integer, got {new_tokens}")
    for flag, given in (("--mode", args.mode != "auto"), ("--drop-unseen", args.drop_unseen)):
        if given:
            where["tell"](f"{flag} applies to classifier and regression runs; ignored for a language-model run")
    prompts, gold = _prompts(args, where)
    from .backbone import load_tokenizer
    from .language import generate, generation_rows
    from .runs import load_run, run_samples

    posterior, _ = load_run(args.run, where["device"])
    tokenizer = load_tokenizer(posterior.backbone_name)
    samples = run_samples(posterior) if args.samples is None else args.samples
    rows = generate(posterior, tokenizer, prompts, max_new_tokens=new_tokens, num_samples=samples)
    return generation_rows(rows, gold)


def _prompts(args: argparse.Namespace, where: dict[str, Any]) -> tuple[list[str], list[str | None] | None]:
    """``(prompts, gold responses or None)`` of ``--data`` (read with the run's column names, each overridden by
    its flag; the response column is optional) or of ``--split`` of the run's own data."""
    from .runs import run_data

    data, split = run_data(args.run, labels=False, **{k: v for k, v in where.items() if k != "device"})
    rows = data.splits[split]
    return list(rows["prompt"]), list(rows["response"]) if "response" in rows.column_names else None


def cmd_bayesianize(args: argparse.Namespace) -> None:
    """A peft adapter on the user's data: a fitted head and TFB on the adapter, or a variational fit from it."""
    from .cli_checks import OutputLock, check_output, check_writable

    out = check_output(args.out, overwrite=args.overwrite)
    check_writable(out)
    for flag in ("epochs", "batch_size", "max_length"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    args.max_examples = getattr(args, "max_examples", None)
    source = _source(args)
    from .front import BayesianPEFT
    from .runs import run_meta

    with OutputLock(out):
        data = source.load()
        from .recipe import Recipe

        schedule = Recipe(epochs=args.epochs, batch_size=args.batch_size)  # what the notes check the flags against
        for line in _notes(args, schedule, source, data, None):
            print(f"bayesianize: {line}", file=sys.stderr)
        vi = args.method == "vi"
        model = BayesianPEFT.from_peft(args.adapter, task=data, backbone=_absolute(args.backbone) if args.backbone and
                                       Path(args.backbone).expanduser().exists() else args.backbone,
                                       guide="mean-field" if vi else "mle", center_prior=vi, lr=args.lr,
                                       max_length=args.max_length, batch_size=args.batch_size, seed=args.seed)
        model.fit(data, epochs=args.epochs)  # the head on the adapter (tfb), or the whole variational fit (vi)
        if not vi:
            model = model.tfb(data)
            print(f"bayesianize: TFB noise scale {model.posterior.meta['tfb']['sigma']:.4g}", file=sys.stderr)
        model.posterior.meta.update(run_meta(model.recipe, source, data))
        model.save(out, overwrite=args.overwrite)
    print(f"bayesianize: {args.method} posterior of {args.adapter} saved to {out}")


def cmd_update(args: argparse.Namespace) -> None:
    from .cli_checks import OutputLock, check_output, check_writable
    from .posterior import read_config
    from .runs import update_run

    out = check_output(args.out, overwrite=args.overwrite)
    if not args.temper > 0:
        raise UserError(f"--temper must be positive, got {args.temper}")
    check_choices(args)
    parent = read_config(args.parent).get("meta") or {}
    overrides = {k: getattr(args, k) for k in ("epochs", "max_steps", "lr") if getattr(args, k) is not None}
    overrides["seed"] = args.seed
    check_writable(out)
    with OutputLock(out):
        result = update_run(args.parent, _source(args, parent), out, temper=args.temper, overrides=overrides,
                            overwrite=args.overwrite, tell=lambda line: print(f"update: {line}", file=sys.stderr))
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
    from .compare.record import available_methods

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}")
    out = Path(args.out if args.out is not None else f"runs/compare-{args.task}")
    if not str(args.out if args.out is not None else out).strip() or out == Path("."):
        raise UserError("--out is empty; give the name of a directory for the comparison")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "protocol.json").is_file())):
        raise UserError(f"{out} is not a comparison directory (no protocol.json); it is never written into or "
                        "replaced: choose another --out")
    methods = args.methods
    if not methods:  # every method the installed extras allow (on a regression, those that predict a Gaussian)
        from .compare.record import METHODS
        from .data import TASKS

        methods, skipped = available_methods()
        if args.task in TASKS and TASKS[args.task].kind == "regression":
            methods = tuple(m for m in methods if METHODS[m].regression)
            skipped = {m: why for m, why in skipped.items() if METHODS[m].regression}
        for name, reason in skipped.items():
            print(f"compare: skipping {name}: {reason}", file=sys.stderr)
    report = run_compare(protocol_from(args), out, methods=methods,
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
    from .cli_checks import OutputLock, check_output
    from .meta import MetaConfig, meta_fit_run

    out = check_output(args.out, overwrite=args.overwrite)
    if args.per_task < 1:
        raise UserError(f"--per-task must be a positive integer, got {args.per_task}")
    config = MetaConfig(**{k: getattr(args, k) for k in MetaConfig().__dict__})
    tasks = [t for t in args.tasks.split(",") if t]
    with OutputLock(out):
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


COMMANDS = {"meta-fit": cmd_meta_fit, "meta-evaluate": cmd_meta_evaluate, "fit": cmd_fit, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "demo": cmd_demo, "compare": cmd_compare, "diagnose": cmd_diagnose,
            "update": cmd_update, "history": cmd_history, "tasks": cmd_tasks, "bayesianize": cmd_bayesianize}
