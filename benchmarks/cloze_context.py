"""Cost of cloze scoring with each question's context run once (its choices on the cached keys and values)
against one pass over every (context, choice) row, in one process, on the suite's ARC-Easy task.

The packaged SmolLM2-135M, LoRA r=8 on q_proj/v_proj with random weights, the suite's cloze rows of the first
``--questions`` ARC-Easy training questions (128 tokens, right padding trimmed per batch). Two timings, each
interleaved between the two paths so that machine drift hits both alike: a training step (forward and backward of
the score, the suite's batch of 4 questions) and a prediction pass (no gradient, the evaluation batch of 64
questions). Prints the median seconds and the ratio, and checks the two paths give the same scores.

    python benchmarks/cloze_context.py [--questions 64] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from pyro_bhpeft import BayesianPEFT, load_task
    from pyro_bhpeft.models.cloze import ClozeChoice

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task("arc-easy")
    model = BayesianPEFT("smollm2", task=task, mc_scoring="cloze", guide="mle", max_length=128)
    train = task.splits["train"].select(range(args.questions))
    model.fit(train, max_steps=1, lr=1e-9, progress=False)  # builds the model; B stays ~0
    gen = torch.Generator().manual_seed(0)
    weights = {k: (0.02 * torch.randn(v.shape, generator=gen)).requires_grad_()
               for k, v in model.posterior.mean().items()}
    step = next(iter(model.loader(train.select(range(4)), batch_size=4)))[0]
    evaluation = next(iter(model.loader(train, batch_size=64)))[0]
    cloze = model.model
    rows = evaluation["attention_mask"].sum(-1).float()
    print(f"{args.questions} questions: {float(rows.mean()):.1f} tokens per (context, choice) row on average")

    def timed(share: bool, batch, grad: bool) -> tuple[float, torch.Tensor]:
        ClozeChoice.share_context = property(lambda self: share)
        start = time.perf_counter()
        with torch.set_grad_enabled(grad):
            scores = cloze.run(weights, batch)
            if grad:
                scores.logsumexp(-1).sum().backward()
        return time.perf_counter() - start, scores.detach()

    for name, batch, grad in (("training step (4 questions)", step, True), ("prediction (64 questions)", evaluation, False)):
        times = {True: [], False: []}
        for _ in range(args.rounds):
            for share in (True, False):
                seconds, scores = timed(share, batch, grad)
                times[share].append(seconds)
                if share:
                    shared_scores = scores
                else:
                    gap = float((shared_scores - scores).abs().max())
        once, full = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name}: context once {once:.3f} s, every row {full:.3f} s, ratio {once / full:.2f}x "
              f"(max score difference {gap:.1e})")


if __name__ == "__main__":
    main()
