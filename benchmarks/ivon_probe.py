"""IVON-LoRA on a causal LM, step by step: the first steps of the comparison's IVON fit, printed.

Runs the IVON fit of ``compare``'s ``ivon`` method (the peft LoRA plus the answer-row head, IVON with its authors'
settings and the task's effective sample size, the protocol's warm-up and linear decay) for a few steps of seed 0,
and prints each step's loss, its largest logit, the largest weight and the smallest Hessian entry; it stops at the
first non-finite loss. ``--ess-n`` runs the setting the comparison used before (ess = the number of training
questions, IVON's default learning-rate rescaling and weight decay 1e-4), which diverges on SmolLM2.
``--frozen-head`` leaves the head out of IVON (IVON-LoRA's authors score with the frozen LM head).

    python benchmarks/ivon_probe.py --steps 60                  # WinoGrande-S on SmolLM2, as compared
    python benchmarks/ivon_probe.py --steps 60 --ess-n          # the earlier setting: NaN by step 4
    python benchmarks/ivon_probe.py docs/compare/arc-easy       # another comparison's protocol
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch
from torch.nn import functional as F

from pyro_bhpeft.baselines import ivon_optimizer
from pyro_bhpeft.compare import Protocol
from pyro_bhpeft.compare.bench import Bench
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lab_methods, beside this script

from lab_methods import ivon_ess_n
from pyro_bhpeft.compare.peers import ivon_authors, peft_model
from pyro_bhpeft.data import load_task
from pyro_bhpeft.infer import lr_factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", nargs="?", default="docs/compare/winogrande-s",
                        help="the comparison folder whose protocol.json to run under")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ess-n", action="store_true", help="ess = the training-set size, as the comparison ran before")
    parser.add_argument("--frozen-head", action="store_true", help="train the head not at all; IVON on LoRA only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    protocol = Protocol.read(args.comparison, ood_task="")
    bench = Bench(protocol, tempfile.mkdtemp(), load_task(protocol.task), None, progress=False)
    model = peft_model(bench, 0)
    if args.frozen_head:
        model.head.requires_grad_(False)
    optimizer = ivon_optimizer(model.trainable(), **(ivon_ess_n if args.ess_n else ivon_authors)(bench))
    total = protocol.epochs * len(bench.train_loader(0))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup_ratio=protocol.warmup_ratio, decay=protocol.lr_decay))
    torch.manual_seed(0)
    for step, (inputs, labels) in enumerate(bench.train_loader(0), start=1):
        with optimizer.sampled_params(train=True):
            logits = model(inputs)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        schedule.step()
        weight = max(float(p.detach().abs().max()) for p in model.trainable())
        hess = min(float(group["hess"].min()) for group in optimizer.param_groups)
        print(f"step {step:3d}  loss {float(loss.detach()):8.3f}  max |logit| {float(logits.detach().abs().max()):7.1f}  "
              f"max |weight| {weight:.3g}  min Hessian {hess:.3g}", flush=True)
        if not math.isfinite(float(loss.detach())) or step >= args.steps:
            break


if __name__ == "__main__":
    main()
