"""Language-model training and generation cost: our Bayesian LoRA step against peft's LoRA, and answers with
their uncertainty against plain greedy answers, in one process.

Settings (fixed): the packaged SmolLM2-135M; prompts and gold answers of packaged ARC-Easy questions
(:func:`pyro_bhpeft.language.qa_pairs`), batch 4 x 64 tokens, the response's tokens the target; LoRA r=8 on
q_proj/v_proj. Training: peft's LoRA (AdamW, its own masked next-token loss) and our mean-field LoRA through the
public ``fit`` (its own timer of the step, without the call's set-up), in interleaved rounds, the median step. Generation: 8 questions,
up to 8 new tokens, greedy under the posterior mean alone, one question at a time rerunning the whole sequence for
each token (uncached) and with the backbone's key/value cache, the 8 as one left-padded batch with the cache (the
same answers, checked), and with the answer's likelihood, entropy and mutual information under K = 8 draws
(:func:`pyro_bhpeft.language.generate`: the batched greedy answers, then each answer's draws in one folded
forward), in 3 interleaved rounds (medians).

    python benchmarks/lm_cost.py --out docs/scaling/lm_cost       # writes .json and .md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from pyro_bhpeft import PeftConfig, Posterior, fit, priors
from pyro_bhpeft.backbone import load_backbone
from pyro_bhpeft.data import load_task
from pyro_bhpeft.guides import MeanField
from pyro_bhpeft.io import write_json, write_text
from pyro_bhpeft.language import _greedy, _greedy_batch, generate, lm_batches, qa_pairs
from pyro_bhpeft.models import LanguageModel

BATCH, SEQ, R = 4, 64, 8
QUESTIONS = 8  # generation: questions answered


class PeftStep:
    def __init__(self, inputs):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        from pyro_bhpeft.backbone import _resolve

        lm = AutoModelForCausalLM.from_pretrained(_resolve("smollm2"))
        self.model = get_peft_model(lm, LoraConfig(r=R, lora_alpha=16, lora_dropout=0.0,
                                                   target_modules=["q_proj", "v_proj"]))
        labels = inputs["input_ids"].masked_fill(inputs["target_mask"] == 0, -100)
        self.inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "labels": labels}
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)

    def __call__(self) -> None:
        loss = self.model(**self.inputs).loss
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def markdown(result: dict, steps: int) -> str:
    """The table of a run's ``result``: steps as ratios to peft LoRA's, generation to cached greedy answers."""
    step, row = result["step_seconds"], "| {} | {:.2f} | {:.2f} |\n"
    greedy = result["greedy_seconds"]
    return (f"SmolLM2-135M, batch {BATCH} x {SEQ} tokens, LoRA r={R} on q/v; median of {steps} steps. Generation: "
            f"{QUESTIONS} questions, up to 8 new tokens, median of 3 interleaved rounds, as ratios to the cached "
            "greedy answers one question at a time."
            "\n\n| | seconds | ratio |\n|---|---|---|\n"
            + row.format("peft LoRA step", step["peft LoRA"], 1.0)
            + row.format("our mean-field LoRA step", step["mean-field LoRA (ours)"], result["step_ratio"])
            + row.format("greedy answers, the whole sequence rerun per token", result["greedy_uncached_seconds"],
                         result["greedy_uncached_seconds"] / greedy)
            + row.format("greedy answers, key/value cache", greedy, 1.0)
            + row.format(f"greedy answers, the {QUESTIONS} as one left-padded batch, key/value cache",
                         result["greedy_batched_seconds"], result["greedy_batched_seconds"] / greedy)
            + row.format("answers with uncertainty, K = 8 (batched cached greedy, then each answer's 8 draws in one "
                         "folded forward)", result["generate_k8_seconds"], result["generation_ratio"])
            + "\nCached, uncached and batched greedy answers identical: "
            + f"{'yes' if result['same_answers'] else 'NO'}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lm = load_backbone("smollm2")
    prompts, responses = qa_pairs(load_task("arc-easy", max_examples=max(BATCH, QUESTIONS) * 2), "train")
    batches = lm_batches(lm.tokenizer, prompts[:BATCH], responses[:BATCH], max_length=SEQ, batch_size=BATCH)
    inputs = next(iter(batches))[0]
    model = LanguageModel(lm.model, PeftConfig(), priors.Normal(1.0))
    guide = MeanField(model, init_scale=0.01)
    theirs = PeftStep(inputs)

    def ours() -> float:  # the step's own time, as benchmarks/step_time.py takes it (not the fit's set-up)
        return fit(model, guide, batches, num_data=1000, max_steps=1, progress=False).step_seconds[0]

    def peft_step() -> float:
        tick = time.perf_counter()
        theirs()
        return time.perf_counter() - tick

    times = {"peft LoRA": [], "mean-field LoRA (ours)": []}
    peft_step(), ours()  # warm-up
    for _ in range(args.steps):
        times["peft LoRA"].append(peft_step())
        times["mean-field LoRA (ours)"].append(ours())
    step = {name: statistics.median(t) for name, t in times.items()}
    posterior = Posterior(model, guide)
    mean = posterior.mean()

    contexts = [lm.tokenizer.encode(p, add_special_tokens=False) for p in prompts[:QUESTIONS]]

    def greedy(use_cache: bool) -> list[list[int]]:
        return [_greedy(model, mean, c, 8, lm.tokenizer.eos_token_id, use_cache=use_cache)[0] for c in contexts]

    def batched() -> list[list[int]]:
        return [t for t, _ in _greedy_batch(model, mean, contexts, 8, lm.tokenizer.eos_token_id)]

    def with_uncertainty() -> None:
        generate(posterior, lm.tokenizer, prompts[:QUESTIONS], max_new_tokens=8, num_samples=8)

    same = greedy(True) == greedy(False) == batched()  # the cache and the batch change the cost, not the answers
    runs = {"uncached": lambda: greedy(False), "cached": lambda: greedy(True), "batched": batched,
            "k8": with_uncertainty}
    gen: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(3):  # interleaved rounds: machine drift hits all alike
        for name, fn in runs.items():
            tick = time.perf_counter()
            fn()
            gen[name].append(time.perf_counter() - tick)
    secs = {name: statistics.median(t) for name, t in gen.items()}
    result = {"step_seconds": step, "step_ratio": step["mean-field LoRA (ours)"] / step["peft LoRA"],
              "greedy_uncached_seconds": secs["uncached"], "greedy_seconds": secs["cached"],
              "greedy_batched_seconds": secs["batched"], "batch_speedup": secs["cached"] / secs["batched"],
              "generate_k8_seconds": secs["k8"], "cache_speedup": secs["uncached"] / secs["cached"],
              "generation_ratio": secs["k8"] / secs["cached"],
              "generation_ratio_to_uncached_greedy": secs["k8"] / secs["uncached"], "same_answers": same}
    text = markdown(result, args.steps)
    print(text)
    if args.out:
        write_json(Path(f"{args.out}.json"), result)
        write_text(Path(f"{args.out}.md"), text + "\nCommand: `python benchmarks/lm_cost.py --out " + args.out + "`\n")


if __name__ == "__main__":
    main()
