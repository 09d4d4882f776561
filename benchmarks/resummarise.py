"""Regenerate the summaries of every committed comparison from its saved cells, into a copy.

Each folder under ``docs/`` holding ``protocol.json`` and ``cells/`` is copied to ``OUT/<same path>`` and
summarised again (:func:`pyro_bhpeft.compare.summarize`, methods in registry order, the seeds its
``comparison.md`` names); then ``comparison.md``, ``comparison.csv`` and ``significance.csv`` are compared
with the committed ones. A language-model experiment (``docs/lm``) is summarised by its own runner
(``lm_answers.summarize``) and its ``comparison.md`` and ``comparison.json`` compared. The experiment-only
methods (:mod:`lab_methods`) and the selection candidates (:mod:`select_recipes`) are registered first, so every
committed cell has its method.

    python benchmarks/resummarise.py /tmp/regen        # prints one line per comparison; exit 1 on a difference
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import lab_methods  # noqa: E402,F401  (registers the experiment-only methods)
from select_recipes import CANDIDATES  # noqa: E402

from pyro_bhpeft.compare import METHODS, register_method, summarize  # noqa: E402

SUMMARY_FILES = ("comparison.md", "comparison.csv", "significance.csv")
LM_SUMMARY_FILES = ("comparison.md", "comparison.json")


def comparisons(root: Path) -> list[Path]:
    """Every committed comparison folder under ``root``."""
    return sorted(p.parent for p in root.rglob("protocol.json") if (p.parent / "cells").is_dir()
                  and (p.parent / "comparison.md").exists())


def seeds_of(folder: Path) -> list[int]:
    """The seeds the comparison was summarised over (its ``comparison.md`` names them)."""
    found = re.search(r"Seeds ([0-9, ]+);", (folder / "comparison.md").read_text())
    if found is None:
        raise ValueError(f"{folder}/comparison.md names no seeds")
    return [int(s) for s in found.group(1).split(",")]


def lm_experiment(folder: Path) -> dict | None:
    """The protocol of a language-model experiment (``benchmarks/lm_answers.py``: it names its methods), else None."""
    protocol = json.loads((folder / "protocol.json").read_text())
    return protocol if isinstance(protocol.get("methods"), dict) else None


def resummarise(folder: Path, out: Path) -> list[str]:
    """Summarise a copy of ``folder`` at ``out``; the names of the summary files that differ."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(folder, out, ignore=shutil.ignore_patterns("fits"))  # git-ignored: a clean clone has none
    protocol = lm_experiment(folder)
    if protocol is not None:  # summarised by its own runner: comparison.md and comparison.json
        import lm_answers

        lm_answers.summarize(out, protocol)
        return [f for f in LM_SUMMARY_FILES if (folder / f).read_bytes() != (out / f).read_bytes()]
    seeds = seeds_of(folder)
    cells = {c.name.rsplit("-seed", 1)[0] for c in (out / "cells").iterdir()}
    summarize(out, [m for m in METHODS if m in cells], seeds)
    return [f for f in SUMMARY_FILES if (folder / f).read_bytes() != (out / f).read_bytes()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--docs", type=Path, default=Path(__file__).parent.parent / "docs")
    args = parser.parse_args()
    for name, method in CANDIDATES.items():
        if name not in METHODS:
            register_method(name, method)
    failed = 0
    for folder in comparisons(args.docs):
        diff = resummarise(folder, args.out / folder.relative_to(args.docs))
        failed += bool(diff)
        print(f"{folder.relative_to(args.docs)}: {'differs in ' + ', '.join(diff) if diff else 'identical'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
