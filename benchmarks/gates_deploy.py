"""Does the deployed (thresholded) gated LoRA predict like the network that was fitted? Validation split.

For each saved gated-LoRA fit of a comparison (its ``fits/`` cache), on the protocol's validation split:
the gate logits' posterior (mean and scale, per kind of gate), how many gates sit in the relaxation's soft
region (0 < gate < 1) at the posterior mean, and three predictives of the same fit: the gates thresholded at
0.5 (what ``compare``'s ``lora-gates`` deploys), the soft gates at the posterior mean, and 8 posterior draws.
A deployed network that matches the fitted one has the three close; the first gated LoRA (no relaxation
noise) did not.

    python benchmarks/gates_deploy.py docs/compare/r8 --method lora-gates --seeds 0,1,2 --out docs/gates
    python benchmarks/gates_deploy.py docs/compare/r8 --label nonoise --out docs/gates \
        --fit docs/compare/r8/fits/mean-field-seed1-f5412f055619      # a fit of the first version
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lab_methods, beside this script

import lab_methods  # noqa: F401  (lora-gates-nonoise)
from pyro_bhpeft.compare import METHODS, Protocol
from pyro_bhpeft.compare.bench import Bench, fit_dir
from pyro_bhpeft.data import load_task
from pyro_bhpeft.io import write_text
from pyro_bhpeft.layers.gates import GATE_SITES, GatedLoraLinear, gate_value, hard_gates
from pyro_bhpeft.posterior import Posterior
from pyro_bhpeft.predict import predict


def _score(pred) -> str:
    y, probs = pred.labels, pred.probs
    nll = -probs[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()
    acc = (probs.argmax(-1) == y).float().mean()
    return f"{100 * acc:.1f} | {nll:.3f} | {probs.max(-1).values.mean():.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", type=Path, help="a comparison folder (protocol.json, fits/)")
    parser.add_argument("--method", default="lora-gates", help="the gated method whose fits to read")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--fit", type=Path, action="append", default=[], help="a fit folder instead (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write gates_deploy-{task}-{label}.md here")
    parser.add_argument("--label", default=None, help="the file's label (default: the method)")
    args = parser.parse_args()
    protocol = Protocol.read(args.comparison, ood_task="")
    fits = args.fit or [fit_dir(args.comparison, protocol.recipe(int(s), **METHODS[args.method].base_fit))
                        for s in args.seeds.split(",")]
    missing = [str(f) for f in fits if not (f / "fit.json").exists()]
    if missing:
        raise SystemExit(f"gates_deploy: no fit at {', '.join(missing)}; run compare with --methods {args.method}")
    bench = Bench(protocol, Path("/tmp/gates_deploy"), load_task(protocol.task), None, progress=False)
    loader = bench.eval_loaders["validation"]
    gates = ["| fit | gate | logit mean | logit range | scale mean | open at mean | soft at mean | mean gate |",
             "|---|---|---|---|---|---|---|---|"]
    preds = ["| fit | predictive | accuracy % | NLL | mean top probability |", "|---|---|---|---|---|"]
    for path in fits:
        post = Posterior.load(path, backbone=bench.backbone())
        temperature = next(layer.config.temperature for layer in post.model.peft_layers
                           if isinstance(layer, GatedLoraLinear))
        marginals = post.marginals()
        for kind in GATE_SITES:
            loc = torch.cat([m.loc.flatten() for n, m in marginals.items() if n.endswith(kind)])
            scale = torch.cat([m.scale.flatten() for n, m in marginals.items() if n.endswith(kind)])
            g = gate_value(loc, temperature)
            gates.append(f"| {path.name} | {kind} | {loc.mean():.2f} | [{loc.min():.2f}, {loc.max():.2f}] | "
                         f"{scale.mean():.3f} | {(g > 0.5).float().mean():.2f} | {((g > 0) & (g < 1)).float().mean():.2f}"
                         f" | {g.mean():.3f} |")
        with hard_gates(post.model):
            preds.append(f"| {path.name} | gates thresholded (deployed) | {_score(predict(post, loader, num_samples=0))} |")
        preds.append(f"| {path.name} | soft gates at the posterior mean | {_score(predict(post, loader, num_samples=0))} |")
        preds.append(f"| {path.name} | 8 posterior draws | {_score(predict(post, loader, num_samples=8))} |")
        print("\n".join(preds[-3:]), flush=True)
    text = (f"# Gated LoRA: deployed vs fitted, `{protocol.task}` validation ({len(bench.data.splits['validation'])} "
            f"examples)\n\n" + "\n".join(gates) + "\n\n" + "\n".join(preds) + "\n")
    print(text)
    if args.out:
        write_text(args.out / f"gates_deploy-{protocol.task}-{args.label or args.method}.md", text)


if __name__ == "__main__":
    main()
