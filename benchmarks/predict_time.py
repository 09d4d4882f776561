"""Prediction cost of K posterior draws against one deterministic forward, in one process.

Settings (fixed): the packaged MiniLM (or ``--backbone smollm2``), the hybrid PEFT (LoRA r=8 on the
attention projections, adapters, prefixes) under a mean-field guide, 64-token inputs, predicted one at a
time (8 examples in batches of 1, as an interactive user would) and in bulk (64 examples in batches of
32). For K = 1, 8 and 16 draws it times ``predict`` two ways: one backbone forward per draw (a Python
loop, ``max_rows=1``) and the draws folded into the batch with the device's default number of rows per
forward (each PEFT layer applying its own draw to its block of rows by a batched matmul). The baseline is
one forward with the posterior mean (``num_samples=0``), the cost of a deterministic model. Cases run in
interleaved rounds so that machine drift hits all of them alike; each figure is the median over rounds.

    python benchmarks/predict_time.py --out docs/scaling        # a table, the ratios and a figure
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pyro.poutine as poutine
import torch
from matplotlib.figure import Figure

from pyro_bhpeft import PeftConfig, load_backbone, predict
from pyro_bhpeft.analysis import plots
from pyro_bhpeft.analysis.tables import markdown_table
from pyro_bhpeft.guides import MeanField
from pyro_bhpeft.io import write_text
from pyro_bhpeft.models import AnswerChoice, SequenceClassifier
from pyro_bhpeft.layers.arch import architecture
from pyro_bhpeft.posterior import Posterior

SEQ = 64
SETTINGS = {"one at a time": (8, 1), "in bulk": (64, 32)}  # examples, batch size
DRAWS = (1, 8, 16)
ANSWERS = (330, 389)  # SmolLM2's " A", " B"


def batches(vocab: int, examples: int, batch: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (examples, SEQ), generator=g)
    return [{"input_ids": ids[i:i + batch], "attention_mask": torch.ones_like(ids[i:i + batch])}
            for i in range(0, examples, batch)]


def posterior(name: str) -> Posterior:
    backbone = load_backbone(name).model
    peft = PeftConfig.hybrid(r=8)
    model = (AnswerChoice(backbone, peft, answer_ids=ANSWERS) if architecture(backbone).decoder
             else SequenceClassifier(backbone, peft, num_labels=2))
    guide = MeanField(model, init_scale=0.05)
    with torch.no_grad(), poutine.block():
        guide(*model.dummy_data())
    return Posterior(model, guide)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="write predict_time.md and .png here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    post = posterior(args.backbone)
    vocab = load_backbone(args.backbone).tokenizer.vocab_size
    cases = {"deterministic (posterior mean)": (0, None)}
    for k in DRAWS:
        cases[f"K={k}, one forward per draw"] = (k, 1)
        cases[f"K={k}, draws folded into the batch"] = (k, None)
    times = {(setting, name): [] for setting in SETTINGS for name in cases}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for setting, (examples, size) in SETTINGS.items():
            data = batches(vocab, examples, size)
            for name, (k, rows) in cases.items():
                tick = time.perf_counter()
                predict(post, data, num_samples=k, seed=0, max_rows=rows)
                if round_:
                    times[setting, name].append((time.perf_counter() - tick) / examples * 1e3)
                    print(f"round {round_}, {setting}, {name}: {times[setting, name][-1]:.2f} ms/example", flush=True)
    med = {key: statistics.median(t) for key, t in times.items()}
    base = {setting: med[setting, next(iter(cases))] for setting in SETTINGS}
    rows = [[name] + [f"{med[s, name]:.2f} ({med[s, name] / base[s]:.2f}x)" for s in SETTINGS] for name in cases]
    speedups = "; ".join(f"{s}: " + ", ".join(f"K={k} {med[s, f'K={k}, one forward per draw'] / med[s, f'K={k}, draws folded into the batch']:.2f}x"
                                          for k in DRAWS) for s in SETTINGS)
    head = (f"{args.backbone}, hybrid PEFT (LoRA r=8, adapters, prefixes), mean-field; {SEQ}-token inputs; "
            f"{args.threads} threads; median of {args.rounds} interleaved rounds")
    table = markdown_table(["predict", *(f"ms per example, {s} (x deterministic)" for s in SETTINGS)], rows)
    print(head, table, f"folding the draws into the batch, speed-up over the loop: {speedups}", sep="\n\n")
    if args.out is None:
        return
    fig = Figure(figsize=(9, 3.4))
    x = np.arange(len(DRAWS))
    for ax, setting in zip(fig.subplots(1, len(SETTINGS), sharey=True), SETTINGS):
        for offset, label in ((-0.2, "one forward per draw"), (0.2, "draws folded into the batch")):
            ax.bar(x + offset, [med[setting, f"K={k}, {label}"] / base[setting] for k in DRAWS], 0.4, label=label)
        ax.axhline(1.0, color="k", linestyle="--", linewidth=1, label="one deterministic forward")
        ax.set_xticks(x, [f"K = {k}" for k in DRAWS])
        ax.set_title(f"{args.backbone}, examples {setting} (batch {SETTINGS[setting][1]})", fontsize=10)
    fig.axes[0].set_ylabel("predict time / deterministic")
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    plots.save(fig, args.out / "predict_time.png")
    write_text(args.out / "predict_time.md",
               f"# {__doc__.splitlines()[0]}\n\n{head}.\n\n{table}\n\nFolding the draws into the batch, speed-up "
               f"over one forward per draw: {speedups}.\n\n![predict time](predict_time.png)\n\n"
               f"    python benchmarks/predict_time.py --backbone {args.backbone} --out {args.out}\n")


if __name__ == "__main__":
    main()
