"""Language-model rows: a prompt and its response as one sequence, the response's tokens the target.

Each row becomes ``input_ids`` (prompt, response, then the end-of-sequence token where the tokenizer has one),
right padded to ``max_length``, with ``attention_mask`` and ``target_mask`` (1 on the response and end tokens):
the prompt carries no loss. A prompt too long gives way from its start; a response too long is an error.

Example::

    rows = response_rows(tokenizer, ["Question: Which is a metal? Answer:"], [" iron"], max_length=32)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .types import DataError, TaskSpec

__all__ = ["response_rows", "encode_responses"]


def response_rows(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_length: int
                  ) -> dict[str, list[list[int]]]:
    """``input_ids``, ``attention_mask`` and ``target_mask`` of each prompt-response pair, (rows, max_length)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "target_mask": []}
    for prompt, response in zip(prompts, responses):
        answer = tokenizer.encode(response, add_special_tokens=False) + ([eos] if eos is not None else [])
        if len(answer) >= max_length:
            raise DataError(f"a response is {len(answer)} tokens, at least max_length ({max_length}); raise max_length")
        context = tokenizer.encode(prompt, add_special_tokens=False)[-(max_length - len(answer)):]
        fill = max_length - len(context) - len(answer)
        out["input_ids"].append(context + answer + [pad] * fill)
        out["attention_mask"].append([1] * (len(context) + len(answer)) + [0] * fill)
        out["target_mask"].append([0] * len(context) + [1] * len(answer) + [0] * fill)
    return out


def encode_responses(spec: TaskSpec, tokenizer: Any, settings: dict) -> Callable[[dict], dict]:
    """The batched ``Dataset.map`` function of ``language_model`` rows."""
    return lambda batch: response_rows(tokenizer, batch["prompt"], batch["response"], settings["max_length"])
