"""The ranks and bits gated LoRA learned, per layer and matrix, from a comparison's ``lora-gates`` cells.

Reads ``CELLS/lora-gates-seed*/metrics.json`` (each cell records, per gated layer, the rank kept and the bits of
A and B after thresholding the gates at their posterior means) and draws one panel per seed: blocks by row,
the adapted matrices by column, the colour the rank kept (of r_max = 8), the text ``rank / bits_A / bits_B``.

    python benchmarks/gates_figure.py docs/compare/sentiment/cells --out docs/gates
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pyro_bhpeft.analysis import plots
from pyro_bhpeft.io import write_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", type=Path, help="a comparison's cells folder with lora-gates-seed*/metrics.json")
    parser.add_argument("--out", type=Path, default=Path("docs/gates"))
    args = parser.parse_args()
    found = sorted(args.cells.glob("lora-gates-seed*/metrics.json"))
    if not found:
        raise SystemExit(f"gates_figure: no lora-gates-seed*/metrics.json under {args.cells}; run compare with "
                         "--methods lora-gates first")
    runs = [json.loads(p.read_text()) for p in found]
    matrices = sorted({g["layer"].rsplit(".", 1)[-1] for g in runs[0]["gates"]})
    blocks = sorted({g["block"] for g in runs[0]["gates"]})
    fig = Figure(figsize=(2.4 * len(runs) + 1.5, 0.45 * len(blocks) + 1.6))
    *axes, bar = fig.subplots(1, len(runs) + 1, gridspec_kw={"width_ratios": [1] * len(runs) + [0.08]})
    rows = []
    for ax, path, run in zip(axes, found, runs):
        grid = np.full((len(blocks), len(matrices)), np.nan)
        for g in run["gates"]:
            i, j = blocks.index(g["block"]), matrices.index(g["layer"].rsplit(".", 1)[-1])
            grid[i, j] = g["rank"]
            ax.text(j, i, f"{g['rank']}/{g['bits_A']}/{g['bits_B']}", ha="center", va="center", fontsize=8,
                    color="white" if g["rank"] < 5 else "black")
        image = ax.imshow(grid, vmin=0, vmax=8, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(matrices)), matrices, fontsize=8)
        ax.set_yticks(range(len(blocks)), [f"block {b}" for b in blocks], fontsize=7)
        seed = path.parent.name.rsplit("seed", 1)[-1]
        ax.set_title(f"seed {seed}: {100 * run['bops_ratio']:.2f} % of LoRA's BOPs", fontsize=9)
        rows.append(f"| {seed} | {100 * run['accuracy']:.2f} | {run['ece']:.2f} | {100 * run['bops_ratio']:.2f} | "
                    f"{sum(g['rank'] for g in run['gates'])} of {8 * len(run['gates'])} |")
    fig.colorbar(image, cax=bar, label="rank kept (of 8); text: rank / bits A / bits B")
    args.out.mkdir(parents=True, exist_ok=True)
    plots.save(fig, args.out / "ranks_bits.png")
    table = "\n".join(["| seed | accuracy % | ECE % | bit operations, % of LoRA r=8 at 16 bits | rank components kept |",
                       "|---|---|---|---|---|", *rows])
    write_text(args.out / "gates.md", f"# {__doc__.splitlines()[0]}\n\nFrom `{args.cells}`.\n\n{table}\n\n"
               "![ranks and bits](ranks_bits.png)\n")
    print(table)


if __name__ == "__main__":
    main()
