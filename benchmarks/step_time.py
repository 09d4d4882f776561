"""Training-step cost of Bayesian PEFT against `peft`'s deterministic LoRA, in one process.

Settings (fixed): the packaged MiniLM, batch 16 x 64 tokens, LoRA r=8 (alpha 16) on query/value, mean
pooling and a linear head; or (``--backbone smollm2``) the packaged SmolLM2-135M causal LM at the
causal-LM protocol's batch, 4 x 64 tokens, LoRA on q_proj/v_proj, the last token scored by two answer rows
of the LM head. Adam. Methods run in interleaved rounds so that machine drift hits all of them alike; the
figure is the median step time over the timed steps.

Memory is the training footprint of one step, counted exactly rather than sampled: frozen backbone
weights + trainable tensors (parameters, gradients, two Adam moments) + every tensor autograd saves
for the backward pass (deduplicated by storage).

    python benchmarks/step_time.py --out docs/scaling    # prints and writes the table and the ratios to peft LoRA
    python benchmarks/step_time.py --backbone smollm2    # the same on the causal LM
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from pyro_bhpeft import LoraConfig, PeftConfig, fit, load_backbone
from pyro_bhpeft.guides import MeanField
from pyro_bhpeft.infer import KLStep
from pyro_bhpeft.models import AnswerChoice, SequenceClassifier
from pyro_bhpeft.layers.arch import architecture
from pyro_bhpeft.recipe import PRESETS, Recipe, build_guide

R = 8
SETTINGS = {"minilm": (16, 64), "smollm2": (4, 64)}  # batch, tokens
ANSWERS = (330, 389)  # SmolLM2's " A", " B"
BACKBONE = "minilm"


def make_batch(tokenizer, batch: int, seq: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, tokenizer.vocab_size, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (batch,), generator=g)


class PeftLoraClassifier(nn.Module):
    """The deterministic baseline: peft's LoRA on the same backbone; mean pooling and a linear head (an
    encoder), or the last token and a two-row head (a decoder, as our answer-token model)."""

    def __init__(self):
        super().__init__()
        from peft import LoraConfig as PeftLora, get_peft_model

        backbone = load_backbone(BACKBONE).model
        self.decoder = architecture(backbone).decoder
        self.body = get_peft_model(backbone, PeftLora(r=R, lora_alpha=16, lora_dropout=0.0,
                                                      target_modules=list(architecture(backbone).lora_targets)))
        self.head = nn.Linear(backbone.config.hidden_size, 2)

    def forward(self, batch):
        h = self.body(**batch).last_hidden_state
        if self.decoder:
            return self.head(h[:, -1])
        m = batch["attention_mask"].unsqueeze(-1).float()
        return self.head((h * m).sum(1) / m.sum(1))


class PeftRunner:
    def __init__(self, batch, labels):
        self.model, self.batch, self.labels = PeftLoraClassifier(), batch, labels
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=2e-3)

    def step(self) -> float:
        tick = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(self.batch), self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return time.perf_counter() - tick

    def trainable(self) -> list[torch.Tensor]:
        return self.params

    def frozen_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters() if not p.requires_grad)


class BayesRunner:
    """Our SVI step through the public ``fit``, with state kept between calls; ``preset`` names a recipe
    preset (its prior, guide and fit options), None for N(0, 1) and a mean-field guide."""

    def __init__(self, peft: PeftConfig, batch, labels, preset: str | None = None):
        recipe = Recipe(peft=peft).with_(**{**(PRESETS[preset] if preset else {}), "peft": peft})
        backbone = load_backbone(BACKBONE).model
        self.model = (AnswerChoice(backbone, peft, recipe.make_prior(), answer_ids=ANSWERS)
                      if architecture(backbone).decoder else
                      SequenceClassifier(backbone, peft, recipe.make_prior(), num_labels=2))
        self.guide = build_guide(recipe, self.model) if preset else MeanField(self.model)
        self.options = {"flipout": recipe.flipout, "scale_lr": recipe.scale_lr,
                        "kl_step": KLStep(recipe.kl_step_lr, recipe.kl_reweighting) if recipe.kl_step_lr else None}
        self.data = [(batch, labels)]
        self.step()

    def step(self) -> float:
        # One fit call of one step; its own step timer excludes set-up (guide already built).
        result = fit(self.model, self.guide, self.data, num_data=4000, max_steps=1, progress=False, **self.options)
        return result.step_seconds[0]

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.guide.parameters() if p.requires_grad]

    def frozen_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.backbone.parameters())


def saved_bytes(runner) -> int:
    """Bytes autograd keeps for backward during one training step (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.device.type == "cpu" and not t.is_sparse:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        runner.step()
    return sum(seen.values())


def footprint(runner) -> int:
    trainable = sum(p.numel() * p.element_size() for p in runner.trainable())
    return runner.frozen_bytes() + 4 * trainable + saved_bytes(runner)  # param, grad, 2 Adam moments


def main() -> None:
    global BACKBONE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backbone", choices=SETTINGS, default=BACKBONE)
    parser.add_argument("--out", default=None, help="write step_time-BACKBONE.md and .json here (e.g. docs/scaling)")
    args = parser.parse_args()
    BACKBONE = args.backbone
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = load_backbone(BACKBONE).tokenizer
    size, seq = SETTINGS[BACKBONE]
    batch, labels = make_batch(tokenizer, size, seq)
    runners = {
        "peft LoRA (deterministic)": PeftRunner(batch, labels),
        "BH-PEFT LoRA, mean-field": BayesRunner(PeftConfig(LoraConfig(r=R)), batch, labels),
        "BH-PEFT hybrid, mean-field": BayesRunner(PeftConfig.hybrid(r=R), batch, labels),
        "BLoB (flipout, split KL step)": BayesRunner(PeftConfig(LoraConfig(r=R)), batch, labels, "blob"),
        "BH-PEFT hybrid, function-space": BayesRunner(PeftConfig.hybrid(r=R), batch, labels, "bh-peft-fs"),
        "Bayesian LoRA, function-space": BayesRunner(PeftConfig(LoraConfig(r=R)), batch, labels, "bayes-lora-fs"),
    }
    times = {name: [] for name in runners}
    for _ in range(args.warmup):
        for runner in runners.values():
            runner.step()
    for _ in range(args.steps):  # interleaved rounds
        for name, runner in runners.items():
            times[name].append(runner.step())
    base_name = next(iter(runners))
    base_t = statistics.median(times[base_name])
    base_m = footprint(runners[base_name])
    targets = "/".join(architecture(runners["BH-PEFT LoRA, mean-field"].model.backbone).lora_targets)
    print(f"{BACKBONE}, batch {size} x {seq} tokens, LoRA r={R} on {targets}, {args.threads} threads, "
          f"median of {args.steps} steps")
    print(f"{'method':32s} {'step (s)':>9s} {'time ratio':>11s} {'memory (MB)':>12s} {'memory ratio':>13s}")
    rows = {}
    for name, runner in runners.items():
        t, m = statistics.median(times[name]), footprint(runner)
        rows[name] = {"step_seconds": t, "time_ratio": t / base_t, "memory_mb": m / 2**20, "memory_ratio": m / base_m,
                      "steps_seconds": times[name]}
        print(f"{name:32s} {t:9.3f} {t / base_t:11.2f} {m / 2**20:12.1f} {m / base_m:13.2f}")
    if args.out:
        write(Path(args.out), args, size, seq, targets, rows)


def write(out: Path, args, size: int, seq: int, targets: str, rows: dict) -> None:
    """``step_time-{backbone}.md`` (the table) and ``.json`` (every timed step) under ``out``."""
    from pyro_bhpeft.analysis.tables import markdown_table
    from pyro_bhpeft.io import write_json, write_text

    command = (f"python benchmarks/step_time.py --backbone {BACKBONE} --threads {args.threads} --steps {args.steps} "
               f"--warmup {args.warmup} --out {out}")
    table = markdown_table(["method", "step (s)", "time ratio", "memory (MB)", "memory ratio"],
                           [[n, f"{r['step_seconds']:.3f}", f"{r['time_ratio']:.2f}", f"{r['memory_mb']:.1f}",
                             f"{r['memory_ratio']:.2f}"] for n, r in rows.items()])
    write_text(out / f"step_time-{BACKBONE}.md",
               f"# Training-step time and memory against peft's deterministic LoRA ({BACKBONE})\n\n"
               f"`{command}`: batch {size} x {seq} tokens, LoRA r={R} on {targets}, {args.threads} thread(s), "
               f"median of {args.steps} interleaved steps after {args.warmup} warm-up rounds; memory is the "
               f"training footprint of one step, counted exactly.\n\n{table}\n")
    write_json(out / f"step_time-{BACKBONE}.json", {"command": command, "batch": size, "tokens": seq,
                                                    "threads": args.threads, "results": rows})


if __name__ == "__main__":
    main()
