"""Wall time of one fit in one process against the same fit data-parallel on two processes (torchrun, gloo).

The same command both ways: the packaged MiniLM, LoRA MAP on sentiment (a random subset), batch 16, the same
steps; one process with ``--threads`` threads, or two with ``--threads / 2`` each. Prints the fit seconds
(from each run's history) and the wall time of each command, and draws them (``ddp.png``). That the two-process
fit reaches the one-process parameters is a test (``tests/test_distributed.py``), not measured here: the two
runs draw their batches with different samplers.

    python benchmarks/ddp.py --out docs/scaling
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], threads: int) -> float:
    tick = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"ddp benchmark: command failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="threads in all (split over the two processes)")
    parser.add_argument("--out", default="docs/scaling")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fit = ["-m", "pyro_bhpeft", "fit", "--task", "sentiment", "--train-size", "1000", "--guide", "map",
           "--max-steps", str(args.steps), "--batch-size", "16", "--device", "cpu"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, launcher, threads in (
                ("1 process", [sys.executable], args.threads),
                ("2 processes (torchrun, gloo)", [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                                                  "2", "--master-port", "29541"], max(1, args.threads // 2))):
            run_dir = Path(tmp) / name.split()[0]
            wall = run([*launcher, *fit, "--out", str(run_dir)], threads)
            history = json.loads((run_dir / "history.json").read_text())
            results[name] = {"wall_seconds": wall, "fit_seconds": history["seconds"], "threads_each": threads}
            print(f"{name:30s} fit {history['seconds']:7.1f} s   wall {wall:7.1f} s   ({threads} threads each)")
    base = results["1 process"]["fit_seconds"]
    for row in results.values():
        row["fit_ratio"] = row["fit_seconds"] / base
    (out / "ddp.json").write_text(json.dumps({"steps": args.steps, "results": results}, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3))
    names = list(results)
    ax.barh(names, [results[n]["fit_seconds"] for n in names], label="fit")
    ax.barh(names, [results[n]["wall_seconds"] - results[n]["fit_seconds"] for n in names],
            left=[results[n]["fit_seconds"] for n in names], label="start-up (load, tokenise)", alpha=0.5)
    ax.set_xlabel("seconds")
    ax.set_title(f"MiniLM LoRA MAP, {args.steps} steps of batch 16, {args.threads} threads in all", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ddp.png", dpi=120)
    print(f"written {out / 'ddp.json'} and {out / 'ddp.png'}")


if __name__ == "__main__":
    main()
