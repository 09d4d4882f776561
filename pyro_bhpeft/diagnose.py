"""Diagnostics of one fitted run: can the variational fit be trusted, and what did the posterior learn?

``pyro-bhpeft diagnose RUN`` draws from the run's posterior, scores the draws on (a slice of) its
training data and writes into ``RUN/diagnostics/``:

* the Pareto k-hat of the importance ratios p(w, D)/q(w) (PSIS; Yao et al. 2018): k < 0.7 means the
  guide is close enough to the posterior for importance-corrected estimates, k >= 0.7 that it is not;
* an ArviZ summary (mean, sd, 94% HDI) of every site's per-draw RMS and of the head's weights;
* figures: ArviZ forest of the per-site RMS, ArviZ posterior densities of the head bias and a few
  sites, posterior vs prior scale per site (which layers learned, which stayed at the prior), and
  the training loss (negative ELBO per example).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["diagnose"]


def diagnose(run: str | Path, out: str | Path | None = None, *, draws: int = 100, examples: int = 256,
             seed: int = 0, overwrite: bool = True) -> Path:
    """Write ``diagnostics.md``, ``diagnostics.json``, ``summary.csv`` and PNGs for ``run``; returns the report."""
    import arviz as az

    from pyro_bhpeft.analysis import pareto_khat, plots, scale_table, to_inference_data
    from .backbone import load_tokenizer
    from .data import make_loader, tokenize
    from .data.prompts import for_backbone
    from .io import atomic_dir, write_json, write_text
    from .guides import guide_kind
    from .infer import scale_warnings
    from .recipe import EVAL_BATCH_SIZE, Recipe
    from .runs import data_hash, load_run, random_rows, recorded_data

    if draws < 10:
        raise ValueError(f"--draws must be at least 10 for a Pareto k-hat, got {draws}")
    if examples < 1:
        raise ValueError(f"--examples must be positive, got {examples}")
    posterior, meta = load_run(run)
    kind = guide_kind(posterior.guide)
    if kind is not None and kind.point_mass:
        raise ValueError(f"{run} is a point estimate (guide {meta.get('recipe', {}).get('guide')}); diagnostics need "
                         "a posterior distribution: fit with --guide mean-field or low-rank")
    source = meta.get("source") or {}
    if "task" not in source and "train" not in source:
        raise ValueError(f"{run} does not record the data it was fitted on; diagnose runs written by fit or update")
    data = recorded_data(run, meta)  # only the very files the fit read, never the network
    train = data.splits["train"]
    recorded = meta.get("data", {}).get("hash")
    if recorded is not None and recorded != data_hash(train):
        raise ValueError(f"the training data of {run} has changed since the fit (its recorded hash does not match "
                         "what loads now); diagnose with the data version it was fitted on")
    num_data = int(meta.get("data", {}).get("size", len(train)))  # the fit may have used a subset
    subset = type(data)(data.spec, type(data.splits)({"train": random_rows(train, min(examples, num_data), seed)}))
    tokenizer = load_tokenizer(posterior.backbone_name)
    subset = for_backbone(subset, posterior.model.backbone, tokenizer)
    max_length = Recipe.from_dict(meta["recipe"]).max_length if meta.get("recipe") else Recipe.max_length
    loader = make_loader(tokenize(subset, tokenizer, max_length)["train"], EVAL_BATCH_SIZE)
    idata = to_inference_data(posterior, loader, num_samples=draws, num_data=num_data, seed=seed)
    khat = pareto_khat(idata)
    rms = [v for v in idata.posterior.data_vars if v.endswith("|rms")]
    head = [v for v in ("head.weight", "head.bias") if v in idata.posterior.data_vars]
    summary = az.summary(idata, var_names=rms + head[1:], kind="stats")
    rows = scale_table(posterior)
    history_file = Path(run) / "history.json"
    saved = json.loads(history_file.read_text()) if history_file.exists() else {}
    history = saved.get("loss", [])
    warnings = scale_warnings(saved.get("scale_steps", []), saved.get("scale_trace", {}))
    target = Path(out) if out is not None else Path(run) / "diagnostics"
    with atomic_dir(target, overwrite=overwrite, replaceable=_ours) as stage:
        figures = [plots.posterior_forest(idata, stage / "forest-rms.png", rms)]
        densities = _first_entries(idata, head[1:] + rms, limit=4)
        if densities:
            figures.append(plots.posterior_densities(idata, stage / "densities.png", densities))
        if rows:
            figures.append(plots.scale_forest(rows, stage / "scales.png"))
        if history:
            figures.append(plots.elbo_trace({"fit": history}, stage / "elbo.png"))
        write_text(stage / "summary.csv", summary.to_csv())
        facts: dict[str, Any] = {"run": str(run), "pareto_khat": khat.k, "reliable": khat.reliable, "draws": draws,
                                 "examples": len(subset.splits["train"]), "num_data": num_data,
                                 "sites_at_prior": sum(r.ratio > 0.9 for r in rows), "sites": len(rows),
                                 "warnings": warnings}
        write_json(stage / "diagnostics.json", facts)
        lines = [f"# Diagnostics of `{run}`", "", f"- {khat} (log-likelihood of {facts['examples']} training "
                 f"examples scaled to {num_data})",
                 f"- {facts['sites_at_prior']} of {len(rows)} sites have a posterior scale above 0.9x their prior's "
                 "(the data did not constrain them)", *[f"- warning: {w}" for w in warnings], "",
                 "## ArviZ summary (per-site RMS of the weights, head bias)", "", _markdown(summary), "",
                 "## Posterior vs prior scale", "", "| site | kind | block | posterior scale | prior scale | ratio |",
                 "|---|---|---|---|---|---|"]
        lines += [f"| {r.site} | {r.kind} | {r.block if r.block is not None else ''} | {r.posterior_scale:.4g} | "
                  f"{r.prior_scale:.4g} | {r.ratio:.3g} |" for r in rows]
        lines += ["", *[f"![{Path(f).name}]({Path(f).name})" for f in figures]]
        write_text(stage / "diagnostics.md", "\n".join(lines) + "\n")
    return target / "diagnostics.md"


def _ours(folder: Path) -> bool:
    """A diagnostics folder this command wrote (or an empty one): the only kind it replaces."""
    return (folder / "diagnostics.json").is_file() or not any(folder.iterdir())


def _first_entries(idata: Any, names: list[str], limit: int) -> list[str]:
    """The leading variables of ``names`` whose entries add up to at most ``limit`` panels."""
    chosen, panels = [], 0
    for name in names:
        size = int(idata.posterior[name].size // (idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]))
        if panels + size > limit:
            break
        chosen.append(name)
        panels += size
    return chosen


def _markdown(table: Any) -> str:
    """A pandas DataFrame of numbers as a Markdown table."""
    lines = ["| variable | " + " | ".join(map(str, table.columns)) + " |", "|---|" + "---|" * len(table.columns)]
    lines += [f"| {index} | " + " | ".join(f"{v:.4g}" for v in row) + " |" for index, row in table.iterrows()]
    return "\n".join(lines)

