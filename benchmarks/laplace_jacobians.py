"""The cost of the Jacobians behind Laplace-LoRA's GLM predictive and diagonal GGN, in one process.

Settings (fixed): the packaged MiniLM with peft LoRA r=8 on query/value and a 2-class head (74,498 weights), a
batch of 16 random 64-token inputs. It times laplace-torch's own ``CurvlinopsGGN.jacobians`` (``jacrev`` of the
whole batch's logits) against the per-example back-end that ``pyro_bhpeft.baselines.laplace_torch`` uses (one
forward and C backward passes per example), checks that both give the same (B, C, P) Jacobians, and prints the
seconds per example of each and their ratio. Cases run in interleaved rounds; each figure is the median.

    python benchmarks/laplace_jacobians.py --rounds 3 --out docs/scaling     # writes laplace_jacobians.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pyro_bhpeft import load_backbone
from pyro_bhpeft.analysis.tables import markdown_table
from pyro_bhpeft.baselines import PeftLoraModel, laplace_torch_fit
from pyro_bhpeft.config import LoraConfig
from pyro_bhpeft.models.base import default_pooling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="folder for laplace_jacobians.md")
    args = parser.parse_args()
    from laplace.curvature import CurvlinopsGGN

    torch.manual_seed(0)
    bb = load_backbone("minilm").model
    model = PeftLoraModel(bb, LoraConfig(), 2, default_pooling(bb))
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(1000, 20000, (args.batch, 64), generator=g),
              "attention_mask": torch.ones(args.batch, 64, dtype=torch.long)}
    fit = laplace_torch_fit(model, [(inputs, torch.randint(0, 2, (args.batch,), generator=g))], marglik_steps=1)
    backend = fit.laplace.backend
    cases = {"laplace-torch (batched jacrev)": lambda: CurvlinopsGGN.jacobians(backend, inputs),
             "per example (ours)": lambda: backend.jacobians(inputs)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    results = {}
    for _ in range(args.rounds):
        for name, run in cases.items():
            tick = time.perf_counter()
            results[name] = run()
            times[name].append((time.perf_counter() - tick) / args.batch)
    (lib_j, lib_f), (ours_j, ours_f) = results.values()
    torch.testing.assert_close(ours_j, lib_j, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours_f, lib_f, rtol=1e-5, atol=1e-6)
    base = statistics.median(times["laplace-torch (batched jacrev)"])
    rows = [[name, f"{statistics.median(t):.3f}", f"{base / statistics.median(t):.1f}x"] for name, t in times.items()]
    table = markdown_table(["Jacobians of", "s per example (median)", "speed-up"], rows)
    text = (f"# Laplace-LoRA's Jacobians: laplace-torch's against per example\n\n`python benchmarks/laplace_jacobians.py "
            f"--rounds {args.rounds}`; MiniLM, peft LoRA r=8, {ours_j.shape[-1]:,} weights, batch {args.batch} x 64 "
            f"tokens, {torch.get_num_threads()} thread(s); equal Jacobians checked.\n\n{table}\n")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "laplace_jacobians.md").write_text(text)


if __name__ == "__main__":
    main()
