"""The same tasks from the Hugging Face hub, for users who can reach it, converted to our columns."""

from __future__ import annotations

import datasets

from .types import DataError, TaskSpec

__all__ = ["load_from_hub", "CONFIGS"]

CONFIGS = {"arc-easy": "ARC-Easy", "arc-challenge": "ARC-Challenge", "openbookqa": "main", "winogrande": "winogrande_xl"}


def _letter_choices(row: dict) -> dict:
    """ARC, OpenBookQA, CommonsenseQA: choices {text, label}, answerKey a label."""
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    question = row.get("question") or row.get("question_stem")
    return {"question": question, "choices": list(texts), "label": labels.index(row["answerKey"])}


def _convert(name: str, row: dict) -> dict:
    if name == "sentiment":
        return {"text": row.get("text", row.get("sentence")), "label": int(row["label"])}
    if name == "20ng":
        return {"text": row["text"], "label": int(row["label"])}
    if name in ("arc-easy", "arc-challenge", "openbookqa", "commonsenseqa"):
        return _letter_choices(row)
    if name == "piqa":
        return {"question": row["goal"], "choices": [row["sol1"], row["sol2"]], "label": int(row["label"])}
    if name == "winogrande":
        before, _, after = row["sentence"].partition("_")
        return {"question": before.strip(), "choices": [row["option1"] + after, row["option2"] + after],
                "label": int(row["answer"]) - 1}
    if name == "boolq":
        return {"question": f"{row['passage']}\n{row['question']}?", "choices": ["no", "yes"],
                "label": int(bool(row["answer"]))}
    raise DataError(f"task {name!r} has no hub conversion; use source='package'")


def load_from_hub(spec: TaskSpec) -> datasets.DatasetDict:
    """Load ``spec.hub_id`` and convert every split; needs a reachable hub."""
    if not spec.hub_id:
        raise DataError(f"task {spec.name!r} has no hub dataset; use source='package' (the default)")
    try:
        raw = datasets.load_dataset(spec.hub_id, CONFIGS.get(spec.name))
    except Exception as err:  # connection errors come in many types
        raise DataError(f"could not load {spec.hub_id} from the hub ({type(err).__name__}); "
                        "use source='package' (the default) without a hub") from None
    out = datasets.DatasetDict()
    for split, ds in raw.items():
        rows = [_convert(spec.name, r) for r in ds]
        if spec.kind == "multiple_choice":
            rows = [r for r in rows if len(r["choices"]) == spec.num_choices]
        rows = [r for r in rows if r["label"] >= 0]  # unlabelled test splits
        if rows:
            out["validation" if split == "valid" else split] = datasets.Dataset.from_list(rows)
    if "test" not in out and "validation" in out:
        out["test"] = out.pop("validation")
    if "validation" not in out:
        parts = out["train"].train_test_split(test_size=0.1, seed=0)
        out["train"], out["validation"] = parts["train"], parts["test"]
    return out
