"""What does the frozen causal LM know before any fine-tuning? Two zero-shot scorings of the same questions.

* ``letter``: the protocol the comparisons use (and BLoB, Laplace-LoRA, IVON-LoRA): the choices listed as
  ``A) text`` under the question, the next-token logits after ``Answer:`` restricted to ``" A"``, ``" B"``, ...
* ``cloze``: each choice's own text scored as the continuation of the question (the log-likelihood
  formulation of the LM evaluation harnesses): softmax over the choices of the summed token log-probabilities
  (``cloze``) and of their per-token mean (``cloze-norm``). WinoGrande's rows are already cut at the blank, so
  the continuation is the sentence's ending with the option in it.

If ``cloze`` is well above chance and ``letter`` at chance, the model knows answers but cannot yet map them to
letters: the letter protocol, not the knowledge, is what fine-tuning has to teach it. Same test rows as
``compare`` (``--eval-size`` rows drawn by ``--subset-seed``).

    python benchmarks/zero_shot_mc.py --tasks arc-easy,winogrande-s --out docs/compare/zero-shot-smollm2.md
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pyro_bhpeft.analysis.metrics import accuracy, ece, nll
from pyro_bhpeft.backbone import load_backbone
from pyro_bhpeft.compare.bench import subset
from pyro_bhpeft.data import load_task
from pyro_bhpeft.data.prompts import answer_token_ids, prompt_style
from pyro_bhpeft.io import write_text


@torch.no_grad()
def last_logits(model, tokenizer, texts: list[str], batch: int = 16) -> torch.Tensor:
    """Next-token logits after each text (left padded), ``(len(texts), vocab)``."""
    tokenizer.padding_side = "left"
    out = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i:i + batch], return_tensors="pt", padding=True)
        hidden = model(**enc).last_hidden_state[:, -1]
        out.append(model.lm_head(hidden).float())
    return torch.cat(out)


@torch.no_grad()
def continuation_logprobs(model, tokenizer, contexts: list[str], endings: list[str], batch: int = 16):
    """Summed log-probability of each ending's tokens after its context, and the ending's token count."""
    total, count = [], []
    for i in range(0, len(contexts), batch):
        ctx = [tokenizer.encode(c, add_special_tokens=False) for c in contexts[i:i + batch]]
        end = [tokenizer.encode(e, add_special_tokens=False) for e in endings[i:i + batch]]
        rows = [c + e for c, e in zip(ctx, end)]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):  # right padded: positions line up with the tokens
            ids[r, :len(row)], mask[r, :len(row)] = torch.tensor(row), 1
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        for r, (c, e) in enumerate(zip(ctx, end)):  # the LM head only where an ending's token is predicted
            logp = model.lm_head(hidden[r, len(c) - 1:len(c) + len(e) - 1]).float().log_softmax(-1)
            total.append(float(logp[torch.arange(len(e)), torch.tensor(e)].sum()))
            count.append(len(e))
    return np.array(total), np.array(count)


def softmax(scores: np.ndarray) -> np.ndarray:
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def score_task(task: str, backbone, eval_size: int, subset_seed: int) -> dict[str, dict[str, float]]:
    data = subset(load_task(task), {}, eval_size, subset_seed, splits=("test",))
    rows = list(data.splits["test"])
    labels = np.array([r["label"] for r in rows])
    k = len(rows[0]["choices"])
    style = prompt_style(task)
    model, tok = backbone.model, backbone.tokenizer
    ids = answer_token_ids(tok, style.answer_strings(k))
    letter = last_logits(model, tok, [style.prompt(r["question"], r["choices"]) for r in rows])[:, list(ids)]
    probs = {"letter": softmax(letter.numpy())}
    if style.list_choices:  # choice texts to score (not BoolQ's true/false); WinoGrande's question is the
        # sentence up to the blank, the others' the question followed by "Answer:"
        cloze_context = (lambda q: q.strip()) if task.startswith("winogrande") else \
            (lambda q: f"Question: {q.strip()}\nAnswer:")
        contexts = [cloze_context(r["question"]) for r in rows for _ in range(k)]
        endings = [" " + c.strip() for r in rows for c in r["choices"]]
        total, count = continuation_logprobs(model, tok, contexts, endings)
        probs["cloze"] = softmax(total.reshape(-1, k))
        probs["cloze-norm"] = softmax((total / count).reshape(-1, k))
    return {name: {"accuracy": 100 * accuracy(p, labels), "nll": nll(p, labels), "ece": ece(p, labels),
                   "chance": 100 / k}
            for name, p in probs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="arc-easy,winogrande-s")
    parser.add_argument("--backbone", default="smollm2")
    parser.add_argument("--eval-size", type=int, default=300)
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the table to this markdown file")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone)
    lines = [f"Zero-shot, frozen `{args.backbone}`, {args.eval_size} test rows (subset seed {args.subset_seed}); "
             "`python benchmarks/zero_shot_mc.py " + f"--tasks {args.tasks} --eval-size {args.eval_size}`", "",
             "| task | scoring | accuracy % | chance % | NLL | ECE % |", "|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        tick = time.perf_counter()
        for name, m in score_task(task, backbone, args.eval_size, args.subset_seed).items():
            lines.append(f"| {task} | {name} | {m['accuracy']:.2f} | {m['chance']:.0f} | {m['nll']:.3f} | "
                         f"{m['ece']:.2f} |")
        print(f"{task}: {time.perf_counter() - tick:.0f} s", flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        write_text(args.out, table)


if __name__ == "__main__":
    main()
