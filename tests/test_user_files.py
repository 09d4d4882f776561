"""A newcomer's own files: delimiters, the task kind read from the labels, case-variant classes, files scored
or predicted by a fitted task (labels optional, unseen classes counted or dropped), and what was held out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformers import BertTokenizerFast

from pyro_bhpeft.data import DataError, SplitSource, TaskSpec, load_eval_file, load_files, make_loader, tokenize
from pyro_bhpeft.data.tables import read_table, sniff_delimiter


def _text(path: Path, content: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(content.encode(encoding))
    return path


def _lines(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


# ---- a newcomer's real-ish files, read with no flags beyond the columns ------------------------------------
GERMAN = ["Das Essen war großartig, sehr lecker", "Der Kellner war unhöflich", "Schöne Aussicht, gern wieder",
          "Zu teuer für das, was es ist"]


def _two_class(tmp: Path) -> Path:
    rows = [f'"Review {i}, {"loved" if i % 2 else "hated"} it",{"pos" if i % 2 else "neg"}' for i in range(40)]
    return _text(tmp / "reviews.csv", _lines("text,label", rows))


def _real_valued(tmp: Path) -> Path:
    rows = [f"House number {i},{100 + 3.7 * i + (i % 7) * 0.13:.2f}" for i in range(60)]
    return _text(tmp / "prices.csv", _lines("description,price", rows))


def _fifty_two(tmp: Path) -> Path:
    rows = [f"topic-{i % 52:02d}\tA wire story, number {i}, about topic {i % 52}" for i in range(156)]
    return _text(tmp / "news.tsv", _lines("category\tbody", rows))


def _six_jsonl(tmp: Path) -> Path:
    feelings = ["joy", "sadness", "anger", "fear", "love", "surprise"]
    rows = [json.dumps({"text": f"i feel it {i}", "emotion": feelings[i % 6]}) for i in range(36)]
    return _text(tmp / "emotions.jsonl", "\n".join(rows) + "\n")


def _german(tmp: Path) -> Path:
    rows = [f'"{GERMAN[i % 4]} ({i})",{"positiv" if i % 4 in (0, 2) else "negativ"}' for i in range(20)]
    return _text(tmp / "bewertungen.csv", _lines("Text,Stimmung", rows))


def _semicolon(tmp: Path) -> Path:
    rows = [f"{GERMAN[i % 4]} ({i});{i % 2}" for i in range(20)]
    return _text(tmp / "export.csv", _lines("Text;Note", rows))


def _tab_named_csv(tmp: Path) -> Path:
    rows = [f"{'spam' if i % 3 == 0 else 'ham'}\tWin, win, win: message {i}" for i in range(30)]
    return _text(tmp / "sms.csv", _lines("label\ttext", rows))


NEWCOMER = {  # file, columns, expected kind, number of classes, first training text of the file
    "two_class_csv": (_two_class, {}, "classification", 2, "Review 0, hated it"),
    "real_valued_csv": (_real_valued, {"text_column": "description", "label_column": "price"}, "regression", 0,
                        "House number 0"),
    "fifty_two_class_tsv": (_fifty_two, {"text_column": "body", "label_column": "category"}, "classification", 52,
                            "A wire story, number 0, about topic 0"),
    "six_class_jsonl": (_six_jsonl, {"label_column": "emotion"}, "classification", 6, "i feel it 0"),
    "german_utf8_csv": (_german, {"text_column": "Text", "label_column": "Stimmung"}, "classification", 2,
                        "Das Essen war großartig, sehr lecker (0)"),
    "semicolon_csv": (_semicolon, {"text_column": "Text", "label_column": "Note"}, "classification", 2,
                      "Das Essen war großartig, sehr lecker (0)"),
    "tab_file_named_csv": (_tab_named_csv, {}, "classification", 2, "Win, win, win: message 0"),
}


@pytest.mark.parametrize("case", list(NEWCOMER))
def test_a_newcomers_file_loads_with_only_its_columns_named(case, tmp_path):
    make, columns, kind, classes, first = NEWCOMER[case]
    path = make(tmp_path)
    data = load_files(path, **columns)
    assert data.spec.kind == kind and len(data.spec.label_names) == classes
    texts = [t for split in data.splits.values() for t in split["text"]]
    assert len(texts) == len(read_table(path)) and first in texts and all("\t" not in t for t in texts)
    assert data.notes[0].startswith(f"task kind: {kind}, inferred from column")
    assert data.warnings == ()


# ---- delimiters ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sample, default, expected", [
    ("text,label\na,1\nb,0\n", ",", ","),
    ("text;label\nGut, sehr;1\nSchlecht;0\n", ",", ";"),
    ("label\ttext\npos\ta, b, c\nneg\td, e\n", ",", "\t"),
    ("text|label\nx|1\ny|0\n", ",", "|"),
    ("text\tlabel\na, b\t1\n", "\t", "\t"),
    ('text,label\n"a; b",1\n"c; d",0\n', ",", ","),  # quoted semicolons: still commas
    ("text\nonly one column\n", "\t", "\t"),  # nothing splits it: the suffix's delimiter
])
def test_sniff_delimiter(sample, default, expected):
    assert sniff_delimiter(sample, default) == expected


def test_a_long_csv_with_quoted_line_breaks_is_still_comma_separated(tmp_path):
    rows = [f'"line one of {i}; more\nline two, {"x" * 9000}",{i % 2}' for i in range(40)]  # past the sniffed sample
    path = _text(tmp_path / "long.csv", _lines("text,label", rows))
    assert read_table(path).columns.tolist() == ["text", "label"] and len(read_table(path)) == 40


def test_tsv_and_txt_files_are_read_as_tab_separated(tmp_path):
    for name in ("train.tsv", "train.txt"):
        path = _text(tmp_path / name, _lines("text\tlabel", [f"a, b {i}\t{i % 2}" for i in range(10)]))
        assert read_table(path).columns.tolist() == ["text", "label"]


def test_an_explicit_delimiter_overrides_the_sniffed_one(tmp_path):
    path = _text(tmp_path / "odd.csv", _lines("text|label", [f"x, {i}|{i % 2}" for i in range(10)]))
    assert read_table(path).columns.tolist() == ["text", "label"]  # sniffed
    for given in ("|", "pipe"):
        assert read_table(path, delimiter=given).columns.tolist() == ["text", "label"]
    assert read_table(path, delimiter=",").columns.tolist() == ["text|label"]  # the user's word wins
    tabbed = _text(tmp_path / "t.csv", _lines("text\tlabel", [f"x {i}\t{i % 2}" for i in range(10)]))
    for given in ("\t", "\\t", "tab"):
        assert read_table(tabbed, delimiter=given).columns.tolist() == ["text", "label"]


@pytest.mark.parametrize("header, delimiter, shown", [
    ("label\ttext", ",", r"tab-separated: pass --delimiter '\\t'"),
    ("text;label", ",", "semicolon-separated: pass --delimiter ';'"),
    ("text;label", "\t", "semicolon-separated: pass --delimiter ';'"),
])
def test_a_header_split_by_the_wrong_delimiter_names_delimiter(header, delimiter, shown, tmp_path):
    sep = "\t" if "\t" in header else ";"
    path = _text(tmp_path / "train.csv", _lines(header, [f"a{sep}b"] * 10))
    with pytest.raises(DataError, match=rf"^train.csv has no text column 'text' \(columns: .*\); the header looks "
                                        rf"{shown}$") as err:
        load_files(path, delimiter=delimiter)
    assert "\n" not in str(err.value)


def test_a_delimiter_given_for_a_json_file_is_said_to_be_ignored(tmp_path):
    path = _six_jsonl(tmp_path)
    assert load_files(path, label_column="emotion", delimiter=";").notes[0] == (
        "emotions.jsonl: --delimiter applies to .csv, .tsv, .txt files only; ignored for this file")
    spec = TaskSpec("e", "classification", ("anger", "fear", "joy", "love", "sadness", "surprise"))
    assert load_eval_file(path, spec, columns={"label": "emotion"}, delimiter="\t").notes == (
        "emotions.jsonl: --delimiter applies to .csv, .tsv, .txt files only; ignored for this file",)
    assert load_files(_two_class(tmp_path), delimiter=",").notes[0].startswith("task kind: classification")


def test_bad_delimiter_and_non_utf8_files(tmp_path):
    path = _text(tmp_path / "train.csv", _lines("text,label", ["a,1", "b,0"] * 5))
    with pytest.raises(DataError, match=r"^delimiter must be one character .*got 'ab'; fix --delimiter$"):
        read_table(path, delimiter="ab")
    latin = _text(tmp_path / "latin.csv", _lines("text,label", ["Größe,1", "Maß,0"] * 5), encoding="latin-1")
    with pytest.raises(DataError, match=r"^latin.csv is not UTF-8 text; save it as UTF-8"):
        read_table(latin)
    bom = _text(tmp_path / "bom.csv", "\ufeff" + _lines("text,label", ["a,1", "b,0"] * 5))
    assert read_table(bom).columns.tolist() == ["text", "label"]  # Excel's "CSV UTF-8" starts with a BOM


# ---- the task kind, from the label column ---------------------------------------------------------------------
def _labels(tmp: Path, labels: list, name: str = "train.csv") -> Path:
    path = tmp / name
    pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("labels, kind, said", [
    ([0.5, 1.25, 3.0, 2.75] * 5, "regression", "(4 distinct real numbers)"),
    ([round(i * 0.37, 3) for i in range(1165)], "regression", "(1,165 distinct real numbers)"),
    ([1950 + 2 * (i % 30) for i in range(90)], "regression", "(30 distinct whole numbers)"),
    ([1, 2, 3, 4, 5] * 4, "classification", "(5 classes)"),
    ([i % 52 for i in range(104)], "classification", "(52 classes)"),  # the class ids 0..51
    ([1 + i % 25 for i in range(50)], "classification", "(25 classes)"),  # the class ids 1..25
    (["pos", "neg"] * 10, "classification", "(2 classes)"),
    ([True, False] * 10, "classification", "(2 classes)"),
])
def test_the_task_kind_is_inferred_from_the_labels_and_said_in_one_line(labels, kind, said, tmp_path):
    data = load_files(_labels(tmp_path, labels))
    assert data.spec.kind == kind
    other = "--kind classification" if kind == "regression" else "--kind regression"
    assert data.notes[0].startswith(f"task kind: {kind}, inferred from column 'label' {said}; pass {other}")
    assert all("\n" not in line for line in data.notes)


def test_a_real_valued_target_never_becomes_a_class_per_value(tmp_path):
    path = _labels(tmp_path, [round(i * 0.37, 3) for i in range(1165)])
    assert load_files(path).splits["train"].features["label"].dtype == "float64"
    explicit = load_files(path, kind="classification")  # asked for: kept, with a warning
    assert len(explicit.spec.label_names) == 1165 and explicit.notes[0].startswith("held out of train.csv")
    assert explicit.warnings == ("column 'label' holds real numbers, now 1,165 separate classes; pass --kind "
                                 "regression if they are measurements",)
    assert load_files(_labels(tmp_path, [1, 2] * 10), kind="regression").spec.kind == "regression"
    ids = load_files(_labels(tmp_path, [i % 30 for i in range(60) if i % 30 != 7]),
                     label_names=[f"c{i}" for i in range(30)])
    assert ids.spec.kind == "classification" and len(ids.spec.label_names) == 30  # names given: classes


def test_question_and_choices_columns_without_text_are_multiple_choice(tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [{"question": f"q{i}", "choices": ["a", "b", "c"], "label": i % 3} for i in range(20)]
    path.write_text("\n".join(map(json.dumps, rows)) + "\n")
    data = load_files(path)
    assert data.spec.kind == "multiple_choice" and data.spec.num_choices == 3
    assert data.notes[0].startswith("task kind: multiple_choice, inferred from the columns 'question' and 'choices'")


def test_labels_differing_only_in_case_stay_classes_and_get_one_warning(tmp_path):
    labels = ["Positive", "positive", "negative", "Negative ", "positive", "neutral", "very  good", "Very good"] * 3
    data = load_files(_labels(tmp_path, labels))
    assert data.spec.label_names == ("Negative", "Positive", "Very good", "negative", "neutral", "positive",
                                     "very  good")  # nothing merged
    assert data.warnings == ("column 'label' has labels that differ only in case or spacing, kept as separate "
                             "classes: 'Negative' (3 rows) / 'negative' (3 rows); 'Positive' (3 rows) / 'positive' "
                             "(6 rows); 'Very good' (3 rows) / 'very  good' (3 rows); write each class one way in "
                             "the file if they are the same class",)
    assert load_files(_labels(tmp_path, ["a", "b"] * 10)).warnings == ()


# ---- what was held out of the training file ------------------------------------------------------------------
def test_the_held_out_rows_are_said_and_recorded(tmp_path):
    train = _labels(tmp_path, ["pos", "neg"] * 20)
    data = load_files(train, seed=3)
    assert data.notes[1] == ("held out of train.csv by seed 3: validation 4, test 4 rows (20 %); training on the "
                             "other 32 (pass --eval FILE to evaluate on a file of your own)")
    given = load_files(train, seed=3, eval_files={"test": train})  # a test file given: only validation carved
    assert any(n.startswith("held out of train.csv") and "--eval" not in n for n in given.notes)
    assert data.sources == {"train": SplitSource(str(train), 32),
                            "validation": SplitSource(str(train), 4, "train", 0.1, 3),
                            "test": SplitSource(str(train), 4, "train", 0.1, 3)}
    assert data.describe_splits() == ["train: train.csv (32 rows)", "validation: 10 % of train.csv (4 rows, seed 3)",
                                      "test: 10 % of train.csv (4 rows, seed 3)"]
    test = _labels(tmp_path, ["pos", "neg", "pos"], "test.csv")
    given = load_files(train, eval_files={"test": test})
    assert given.describe_splits() == ["train: train.csv (36 rows)", "validation: 10 % of train.csv (4 rows, seed 0)",
                                       "test: test.csv (3 rows)"]
    both = load_files(train, eval_files={"validation": test, "test": test})
    assert len(both.notes) == 1 and both.describe_splits()[0] == "train: train.csv (40 rows)"


# ---- a file scored or predicted by a fitted task ----------------------------------------------------------------
SPEC = TaskSpec("reviews", "classification", ("negative", "positive"))


def test_texts_alone_are_read_for_prediction_and_batch_without_labels(tmp_path, tokenizer):
    path = _text(tmp_path / "new.csv", _lines("review", ["a good film", "bad", "a film"]))
    data = load_eval_file(path, SPEC, columns={"text_column": "review"}, require_labels=False)
    assert data.splits["test"].column_names == ["text"] and data.splits["test"]["text"] == ["a good film", "bad",
                                                                                           "a film"]
    assert data.notes == ("new.csv: no label column 'label'; predicting text alone",)
    assert data.sources["test"] == SplitSource(str(path), 3, unlabelled=3)
    batches = list(make_loader(tokenize(data, tokenizer, max_length=8)["test"], 2))
    assert [labels for _, labels in batches] == [None, None]
    assert batches[0][0]["input_ids"].tolist()[0][:4] == [2, 5, 6, 8]  # [CLS] a good film
    with pytest.raises(DataError, match=r"^new.csv has no label column 'label' \(columns: review\); scoring needs "
                                        r"the labels: name the column with --label-column \(predict works on text "
                                        r"alone\)$"):
        load_eval_file(path, SPEC, columns={"text": "review"})


def test_an_unseen_class_is_one_line_with_its_rows_or_dropped_when_asked(tmp_path):
    path = _labels(tmp_path, ["positive", "neutral", "negative", "neutral", "Positive", "positive"], "eval.csv")
    with pytest.raises(DataError, match=r"^eval.csv: 3 rows have a class not among the training classes: 'neutral' "
                                        r"\(2 rows\), 'Positive' \(1 row, like 'positive' but for case\); drop them "
                                        r"with --drop-unseen, or fit on data that has these classes$"):
        load_eval_file(path, SPEC)
    data = load_eval_file(path, SPEC, drop_unseen=True)
    assert data.splits["test"]["text"] == ["t0", "t2", "t5"] and data.splits["test"]["label"] == [1, 0, 1]
    assert data.warnings == ("eval.csv: dropped 3 rows of classes not among the training classes: 'neutral' "
                             "(2 rows), 'Positive' (1 row, like 'positive' but for case)",)
    assert data.describe_splits() == ["test: eval.csv (3 rows, 3 dropped (unseen classes))"]
    assert data.sources["test"].unseen == {"neutral": 2, "Positive": 1}
    nothing = _labels(tmp_path, ["neutral"] * 2, "none.csv")
    with pytest.raises(DataError, match="^none.csv: every row has a class not among the training classes"):
        load_eval_file(nothing, SPEC, drop_unseen=True)


def test_predicting_keeps_rows_with_unseen_or_empty_labels_as_minus_one(tmp_path, tokenizer):
    path = _labels(tmp_path, ["positive", "neutral", None, "negative"], "eval.csv")
    dropped = load_eval_file(path, SPEC, require_labels=False, drop_unseen=True)
    assert dropped.splits["test"]["label"] == [1, -1, 0] and dropped.sources["test"].unlabelled == 1
    data = load_eval_file(path, SPEC, require_labels=False)
    assert data.splits["test"]["label"] == [1, -1, -1, 0] and len(data.splits["test"]) == 4
    assert data.warnings == ("eval.csv: 1 row has a class not among the training classes: 'neutral' (1 row); "
                             "their label reads -1",)
    assert data.sources["test"].unlabelled == 2 and data.sources["test"].unseen == {"neutral": 1}
    (_, labels), = make_loader(tokenize(data, tokenizer, max_length=8)["test"], 4)
    assert labels.tolist() == [1, -1, -1, 0]
    with pytest.raises(DataError, match=r"row 3 has no label in column 'label'"):  # scoring needs every label
        load_eval_file(_labels(tmp_path, ["positive", "negative", None], "gaps.csv"), SPEC)


def test_regression_and_multiple_choice_files_to_predict(tmp_path):
    reg = TaskSpec("prices", "regression")
    path = _labels(tmp_path, [1.5, None, "unknown", 2.0], "eval.csv")
    labels = load_eval_file(path, reg, require_labels=False).splits["test"]["label"]
    assert labels[0] == 1.5 and math.isnan(labels[1]) and math.isnan(labels[2]) and labels[3] == 2.0
    assert load_eval_file(path, reg, require_labels=False).warnings == (
        "eval.csv: 1 row has a label that is not a number (first 'unknown'); their label reads NaN",)
    with pytest.raises(DataError, match="regression labels in column 'label' must be numbers, row 2 holds"):
        load_eval_file(path, reg)
    mc = tmp_path / "mc.jsonl"
    mc.write_text("\n".join(json.dumps({"q": f"q{i}", "options": ["a", "b"]}) for i in range(3)) + "\n")
    data = load_eval_file(mc, TaskSpec("m", "multiple_choice", num_choices=2),
                          columns={"question": "q", "choices": "options"}, require_labels=False, split="new")
    assert data.splits["new"].column_names == ["question", "choices"] and len(data.splits["new"]) == 3


def test_load_files_eval_files_drop_unseen(tmp_path):
    train = _labels(tmp_path, ["negative", "positive"] * 10)
    test = _labels(tmp_path, ["positive", "neutral"], "test.csv")
    data = load_files(train, eval_files={"test": test}, drop_unseen=True)
    assert data.splits["test"]["label"] == [1] and data.warnings[0].startswith("test.csv: dropped 1 row of")


@pytest.fixture()
def tokenizer(tmp_path) -> BertTokenizerFast:
    """A tiny WordPiece tokenizer from a vocab file: ids 0-4 special, then the words."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "good", "bad", "film"]) + "\n")
    return BertTokenizerFast(vocab=str(vocab))


def test_batches_of_a_labelled_split_are_unchanged(tmp_path, tokenizer):
    data = load_files(_labels(tmp_path, ["bad", "good"] * 10))
    inputs, labels = next(iter(make_loader(tokenize(data, tokenizer, max_length=8)["train"], 4)))
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.long and inputs["input_ids"].shape == (4, 8)


def test_a_fitted_classifier_predicts_a_file_of_texts_alone(tiny_backbone, tmp_path):
    from transformers import AutoTokenizer, BertModel

    from pyro_bhpeft import LoraConfig, PeftConfig, fit, predict
    from pyro_bhpeft.guides import MeanField
    from pyro_bhpeft.models import SequenceClassifier
    from pyro_bhpeft.predict import prediction_rows

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    train = load_files(_text(tmp_path / "train.csv", _lines("text,label", ["good movie,pos", "awful plot,neg"] * 4)))
    model = SequenceClassifier(BertModel.from_pretrained(tiny_backbone), PeftConfig(lora=LoraConfig(r=2)),
                               num_labels=2)
    posterior = fit(model, MeanField(model), make_loader(tokenize(train, tok, 8)["train"], 4), num_data=6, epochs=1,
                    progress=False).posterior
    texts = load_eval_file(_text(tmp_path / "new.csv", _lines("text", ["a good film", "the plot was awful"])),
                           train.spec, require_labels=False)
    pred = predict(posterior, make_loader(tokenize(texts, tok, 8)["test"], 4), num_samples=2)
    assert pred.labels is None and pred.probs.shape == (2, 2)
    rows = prediction_rows(pred, texts.splits["test"]["text"], train.spec.label_names)
    assert [(r["text"], r["label"]) for r in rows] == [("a good film", None), ("the plot was awful", None)]


def test_a_decoders_answer_choice_task_keeps_where_the_rows_came_from(tmp_path):
    from dataclasses import replace

    from helpers import quiz, save_tiny_causal_lm
    from pyro_bhpeft.backbone import load_backbone
    from pyro_bhpeft.data.prompts import for_backbone

    lm = load_backbone(save_tiny_causal_lm(tmp_path / "lm"))
    data = replace(quiz(), sources={"train": SplitSource("quiz.csv", 4)}, notes=("a note",), warnings=("a warning",))
    scored = for_backbone(data, lm.model, lm.tokenizer)
    assert scored.spec.kind == "answer_choice"
    assert (scored.sources, scored.notes, scored.warnings) == (data.sources, data.notes, data.warnings)


def test_a_language_model_file_without_its_prompt_column_names_the_flag(tmp_path):
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"question": ["2 + 2 ="], "response": ["4"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no prompt column 'prompt' .* with --prompt-column"):
        load_files(path, kind="language_model")


def test_a_language_model_file_to_answer_needs_prompts_only(tmp_path):
    from pyro_bhpeft.data import TaskSpec, load_eval_file

    spec = TaskSpec("pairs", "language_model")
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"prompt": ["2 + 2 =", "3 + 3 ="], "response": ["4", ""]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"row 2 has no text in column 'response'"):  # scoring needs every response
        load_eval_file(path, spec)
    rows = load_eval_file(path, spec, require_labels=False).splits["test"]
    assert rows["prompt"] == ["2 + 2 =", "3 + 3 ="] and rows["response"] == ["4", None]  # an empty one: unscored
    pd.DataFrame({"prompt": ["2 + 2 ="]}).to_csv(path, index=False)
    data = load_eval_file(path, spec, require_labels=False)
    assert data.splits["test"].column_names == ["prompt"] and "no response column 'response'" in data.notes[0]
    with pytest.raises(DataError, match=r"no response column 'response'"):
        load_eval_file(path, spec)
    pd.DataFrame({"question": ["2 + 2 ="]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"no prompt column 'prompt' .* with --prompt-column"):
        load_eval_file(path, spec, require_labels=False)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_numeric_and_none_like_answers_are_read_as_the_file_wrote_them(tmp_path, suffix):
    path = tmp_path / f"sums{suffix}"
    frame = pd.DataFrame({"prompt": ["2 + 2 =", "Agent", "pi =", "Moons of Venus?", "Not applicable?"],
                          "response": ["4", "007", "3.50", "None", "NA"]})
    if suffix == ".jsonl":  # JSON numbers: their text as Python writes it (no trailing zeros survive JSON)
        frame["response"] = [4.0, "007", 3.5, "None", "NA"]
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False, sep="," if suffix == ".csv" else "\t")
    rows = load_files(path, kind="language_model", seed=0).splits
    got = sorted(r for split in rows.values() for r in split["response"])
    assert got == sorted(["4", "007", "3.5" if suffix == ".jsonl" else "3.50", "None", "NA"])


def test_a_file_of_numeric_prompts_and_answers_is_re_read_as_text_once_and_afresh_when_edited(tmp_path, monkeypatch):
    path = tmp_path / "sums.csv"
    pd.DataFrame({"prompt": ["12", "0.50"] * 3, "response": ["0012", "12.0"] * 3}).to_csv(path, index=False)
    reads = []
    real = pd.read_csv
    monkeypatch.setattr(pd, "read_csv", lambda *a, **k: reads.append(k.get("dtype")) or real(*a, **k))
    data = load_files(path, kind="language_model", seed=0).splits
    assert sorted(r for s in data.values() for r in s["prompt"]) == ["0.50"] * 3 + ["12"] * 3
    assert sorted(r for s in data.values() for r in s["response"]) == ["0012"] * 3 + ["12.0"] * 3
    assert reads == [None, str]  # parsed once, then every column as its text once (not once per column)
    pd.DataFrame({"prompt": ["12", "0.50"] * 3, "response": ["0013", "13.0"] * 3}).to_csv(path, index=False)
    data = load_files(path, kind="language_model", seed=0).splits
    assert sorted(r for s in data.values() for r in s["response"]) == ["0013"] * 3 + ["13.0"] * 3  # the edit, not the cache
