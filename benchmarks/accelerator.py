"""The accelerator path: training step time and peak memory against peft LoRA, and K-sample prediction.

Settings (fixed): Qwen2-shaped causal LMs built from configs with random weights (speed needs no trained
weights, and nothing is downloaded): ``0.5b`` (Qwen2-0.5B's shape: 24 blocks, hidden 896) and ``1.5b``
(28 blocks, hidden 1536), in bfloat16 on a GPU (``tiny``, float32, is the CPU check the test suite runs).
Batch 4 x 256 tokens; the last token scored by two answer rows of the LM head (our answer-choice model);
LoRA r=8 on q_proj/v_proj. Methods: peft's LoRA (the deterministic baseline, AdamW), and ours through the
public ``fit``: mean-field LoRA, BLoB (its preset) and the BH-PEFT hybrid (LoRA + adapter + prefix,
mean-field). Each training figure is the median over timed steps after warm-up; peak memory is
``torch.cuda.max_memory_allocated`` over those steps (not measured on a CPU). Prediction: K = 8 posterior
draws folded into the batch (the device's default rows per forward) and looped (one forward per draw),
each as a multiple of one forward at the posterior mean.

    python benchmarks/accelerator.py --out docs/scaling/accelerator          # on a GPU: both sizes, < 8 min
    python benchmarks/accelerator.py --sizes tiny --steps 2 --out /tmp/acc  # the CPU check
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

SIZES = {  # hidden, blocks, heads, kv heads, intermediate, vocab
    "tiny": (64, 2, 4, 2, 128, 512),
    "0.5b": (896, 24, 14, 2, 4864, 151936),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
}
BATCH, SEQ, R, ANSWERS = 4, 256, 8, (10, 11)
METHODS = ("peft LoRA", "mean-field LoRA", "BLoB", "BH-PEFT hybrid")


def causal_lm(size: str, dtype: torch.dtype, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, blocks, heads, kv, inter, vocab = SIZES[size]
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=blocks, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                         max_position_embeddings=SEQ * 2, tie_word_embeddings=size != "1.5b")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Qwen2ForCausalLM(config).to(dtype=dtype, device=device)


def batch(vocab: int, device: torch.device, seq: int) -> tuple[dict, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(100, vocab, (BATCH, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}, \
        torch.randint(0, 2, (BATCH,), generator=g).to(device)


class PeftStep:
    """peft's LoRA with the same answer rows: one AdamW step of cross-entropy per call."""

    def __init__(self, lm, inputs, labels):
        from peft import LoraConfig, get_peft_model

        self.model = get_peft_model(lm, LoraConfig(r=R, lora_alpha=16, lora_dropout=0.0,
                                                   target_modules=["q_proj", "v_proj"]))
        self.inputs, self.labels = inputs, labels
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self) -> None:
        logits = self.model(**self.inputs).logits[:, -1, list(ANSWERS)].float()
        loss = nn.functional.cross_entropy(logits, self.labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


class OurStep:
    """One step of our ``fit`` per call (its own step timer is not used: the wall time is, as for peft)."""

    def __init__(self, lm, inputs, labels, method: str):
        from pyro_bhpeft import PeftConfig
        from pyro_bhpeft.backbone import bare_model
        from pyro_bhpeft.infer import KLStep
        from pyro_bhpeft.models import AnswerChoice
        from pyro_bhpeft.recipe import PRESETS, Recipe, build_guide

        peft = PeftConfig.hybrid(r=R) if method == "BH-PEFT hybrid" else PeftConfig()
        recipe = Recipe().with_(**{**(PRESETS["blob"] if method == "BLoB" else {}), "peft": peft})
        self.model = AnswerChoice(bare_model(lm), peft, recipe.make_prior(), answer_ids=ANSWERS)
        self.guide = build_guide(recipe, self.model)
        self.options = {"flipout": recipe.flipout, "scale_lr": recipe.scale_lr, "num_data": 4000,
                        "kl_step": KLStep(recipe.kl_step_lr, recipe.kl_reweighting) if recipe.kl_step_lr else None}
        self.data = [(inputs, labels)]

    def __call__(self) -> None:
        from pyro_bhpeft import fit

        fit(self.model, self.guide, self.data, max_steps=1, progress=False, **self.options)

    def posterior(self):
        from pyro_bhpeft import Posterior

        return Posterior(self.model, self.guide)


def timed(fn: Callable[[], Any], device: torch.device, steps: int, warmup: int = 2) -> tuple[float, float | None]:
    """Median seconds per call over ``steps`` calls after ``warmup``, and the peak memory in MB (GPU only)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(steps):
        tick = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - tick)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    return statistics.median(seconds), peak


def prediction(runner: OurStep, inputs: dict, device: torch.device, steps: int) -> dict[str, float]:
    from pyro_bhpeft import predict

    posterior, data = runner.posterior(), [inputs]
    base, _ = timed(lambda: predict(posterior, data, num_samples=0), device, steps, warmup=1)
    folded, _ = timed(lambda: predict(posterior, data, num_samples=8, seed=0), device, steps, warmup=1)
    looped, _ = timed(lambda: predict(posterior, data, num_samples=8, seed=0, max_rows=1), device, steps, warmup=1)
    return {"folded K=8": folded / base, "looped K=8": looped / base}


def measure(size: str, device: torch.device, steps: int, seq: int) -> dict[str, Any]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows: dict[str, Any] = {}
    for method in METHODS:
        lm = causal_lm(size, dtype, device)
        inputs, labels = batch(lm.config.vocab_size, device, seq)
        runner = PeftStep(lm, inputs, labels) if method == "peft LoRA" else OurStep(lm, inputs, labels, method)
        seconds, peak = timed(runner, device, steps)
        rows[method] = {"step_seconds": seconds, "peak_mb": peak}
        if method == "mean-field LoRA":
            rows["prediction"] = prediction(runner, inputs, device, steps)
        del runner, lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows["peft LoRA"]
    for method in METHODS[1:]:
        rows[method]["step_ratio"] = rows[method]["step_seconds"] / base["step_seconds"]
        if base["peak_mb"]:
            rows[method]["memory_ratio"] = rows[method]["peak_mb"] / base["peak_mb"]
    return rows


def table(results: dict[str, Any], device: str) -> str:
    from pyro_bhpeft.analysis.tables import markdown_table

    lines = []
    for size, rows in results.items():
        for method in METHODS:
            r = rows[method]
            lines.append([size, method, f"{r['step_seconds'] * 1000:.1f}", f"{r.get('step_ratio', 1.0):.2f}",
                          "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}",
                          f"{r.get('memory_ratio', 1.0):.2f}" if r["peak_mb"] else "-"])
    steps = markdown_table(["size", "method", "step ms", "x peft LoRA", "peak MB", "memory x peft"], lines)
    pred = markdown_table(["size", "folded K=8 (x mean forward)", "looped K=8 (x mean forward)"],
                          [[s, f"{r['prediction']['folded K=8']:.2f}", f"{r['prediction']['looped K=8']:.2f}"]
                           for s, r in results.items()])
    return f"Device: {device}.\n\n{steps}\n\n{pred}\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5b,1.5b", help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seq", type=int, default=SEQ)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results = {size: measure(size, device, args.steps, args.seq) for size in args.sizes.split(",")}
    text = table(results, name)
    print(text)
    if args.out:
        from pyro_bhpeft.io import write_json, write_text

        write_json(Path(f"{args.out}.json"), {"device": name, "results": results})
        write_text(Path(f"{args.out}.md"), text)
    return results


if __name__ == "__main__":
    main()
