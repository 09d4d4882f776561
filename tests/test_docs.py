"""The README and the results pages stay true: every marked table is regenerated from the committed cells and
files and must match to the character, every link and figure resolves, and the README keeps its shape.

Fast (no model runs): it reads committed cells, JSON and benchmark tables only. To rewrite the tables after
adding cells: ``python -m pyro_bhpeft.compare.pages --refresh README.md docs/results/*.md``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pyro_bhpeft.compare.pages import TABLE_MARK, refresh_page, results_table

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "results").glob("*.md"))]
LINKED = PAGES + [ROOT / "docs" / name for name in ("methods.md", "guide.md", "ARCHITECTURE.md", "README.md")]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def test_results_pages_exist():
    assert (ROOT / "docs" / "results" / "index.md").exists()
    assert len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_every_table_regenerates_from_the_committed_files(page):
    """Each ``<!-- table: SPEC -->`` block equals what SPEC regenerates from the committed cells."""
    differ = refresh_page(page, ROOT, write=False)
    assert not differ, (f"{page.name}: these tables differ from the committed cells (rerun "
                        f"`python -m pyro_bhpeft.compare.pages --refresh {page.relative_to(ROOT)}`): {differ}")


@pytest.mark.parametrize("page", LINKED, ids=_ids(LINKED))
def test_every_link_and_figure_resolves(page):
    text = FENCE.sub("", page.read_text())
    missing = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        name, _, anchor = target.partition("#")
        path = (page.parent / name).resolve() if name else page
        if not path.exists():
            missing.append(target)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            missing.append(target)
    assert not missing, f"{page.name} links to files or headings that do not exist: {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_results_page_is_linked_from_the_index():
    index = (ROOT / "docs" / "results" / "index.md").read_text()
    unlinked = [p.name for p in PAGES[1:] if p.name != "index.md" and f"({p.name}" not in index]
    assert not unlinked, f"results pages missing from docs/results/index.md: {unlinked}"


def test_every_committed_comparison_has_a_results_page():
    """Each comparison folder under docs/compare with cells is shown by a marked table on some page."""
    specs = " ".join(m["spec"] for p in PAGES for m in TABLE_MARK.finditer(p.read_text()))
    folders = sorted(p.parent.name for p in (ROOT / "docs" / "compare").glob("*/protocol.json")
                     if (p.parent / "cells").is_dir())
    unshown = [f for f in folders if f"docs/compare/{f} " not in specs + " "]
    assert not unshown, f"comparisons with no table on a results page: {unshown}"


def test_readme_shape():
    """At most 250 lines; its first code block is the Python front door; install and test commands as .ci/run."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first = re.search(r"^```(\w*)\n(.*?)^```", readme, re.S | re.M)
    assert first is not None and first.group(1) == "python"
    assert "from pyro_bhpeft import BayesianPEFT, load_task" in first.group(2)
    ci = (ROOT / ".ci" / "run").read_text()
    for command in ("pip install -q torch==2.13.0", "pip install -q -e '.[test]'",
                    "pip install -q --no-deps -r requirements-laplace.txt", "pytest -q", "pyro-bhpeft demo"):
        assert command in ci, f".ci/run no longer runs {command!r}"
    for command in ("pip install torch==2.13.0", "pip install -e '.[test]'",
                    "pip install --no-deps -r requirements-laplace.txt", "python -m pytest -q", "pyro-bhpeft demo"):
        assert command in readme, f"the README no longer says {command!r}"


def test_an_edited_number_is_caught(tmp_path):
    """Changing one digit of a committed table makes the page differ from its cells."""
    page = next(p for p in PAGES if "<!-- table: compare " in p.read_text())
    text = page.read_text()
    match = next(m for m in TABLE_MARK.finditer(text) if m["spec"].startswith("compare "))
    body = match["body"]
    digit = re.search(r"\d\.\d\d", body.split("\n", 2)[2])
    start = match.start("body") + len(body.split("\n", 2)[0]) + len(body.split("\n", 2)[1]) + 2 + digit.start()
    edited = text[:start] + str((int(text[start]) + 1) % 10) + text[start + 1:]
    copy = tmp_path / "page.md"
    copy.write_text(edited)
    assert refresh_page(copy, ROOT, write=False) == [match["spec"]]


def test_one_seed_rows_print_no_spread():
    table = results_table("compare docs/compare/arc-easy methods=lora,tfb columns=accuracy,ece", ROOT)
    tfb = next(line for line in table.splitlines() if line.startswith("| tfb "))
    assert "| 1 |" in tfb and "±" not in tfb


def test_readme_method_table_numbers_are_on_the_pages_it_links():
    """Every decimal in a cell of the README's "Which method when" table appears on a results page that cell
    links to (where the regenerated tables are), so the summary cannot drift from its evidence unseen. (The
    table the suite generates is checked by regenerating it.)"""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Which method when", 1)[1].split("\n## ", 1)[0]
    section = TABLE_MARK.sub("", section)  # generated tables: checked against their files by the test above
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert rows
    unsupported = []
    for row in rows:
        for cell in row.strip("|").split(" | ")[1:]:
            pages = set(re.findall(r"\((docs/results/[\w.-]+\.md)", cell))
            numbers = re.findall(r"\d+\.\d+", re.sub(r"\([^)]*\)", "", cell))
            if numbers and not pages:
                unsupported.append(f"{cell[:60]}... (no link)")
            texts = [(ROOT / p).read_text() for p in pages]
            unsupported += [f"{n} in {cell[:60]}..." for n in numbers if not any(n in t for t in texts)]
    assert not unsupported, unsupported
