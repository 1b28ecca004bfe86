"""Documentation that users read stays honest: methods are named by their papers (never by this project's
internal paper numbers), every pointer into docs/methods.md lands on a heading, and the docs the README
links exist."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# "seed" + a three-digit paper number (seed 000 ... seed 099, "Seed 004's"): the project's internal names
# for the papers. A random seed ("--seed 0", "seed 11") has no three-digit zero-led number after it.
INTERNAL_NAME = re.compile(r"\bseeds?[ _-]?0\d\d\b", re.IGNORECASE)
ANCHOR = re.compile(r"docs/methods\.md#([a-z0-9-]+)")


def user_visible_files() -> list[Path]:
    files = [*ROOT.glob("ood_monitor/**/*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("launch/*.py"),
             *ROOT.glob("config/*.yaml"), *ROOT.glob("docs/**/*.md"), ROOT / "README.md", ROOT / "setup.py"]
    return sorted(f for f in files if f.is_file())


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def methods_anchors() -> set[str]:
    text = (ROOT / "docs" / "methods.md").read_text()
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_internal_name_pattern_targets_paper_numbers_only():
    assert INTERNAL_NAME.search("kl (Seed 000's score)") and INTERNAL_NAME.search("seeds 003")
    assert not INTERNAL_NAME.search("--seed 0 --seed 11, seed 21, RNG seeded with 0")


def test_no_internal_paper_names_in_user_visible_text():
    hits = [f"{f.relative_to(ROOT)}:{n}: {line.strip()}"
            for f in user_visible_files()
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
            if INTERNAL_NAME.search(line)]
    assert not hits, "name the paper (docs/methods.md) instead of its internal number:\n" + "\n".join(hits)


def test_github_anchor_rules():
    assert github_anchor("MC dropout ignore rule") == "mc-dropout-ignore-rule"
    assert github_anchor("Similarity-guided DDIM") == "similarity-guided-ddim"


def test_every_methods_pointer_lands_on_a_heading():
    anchors = methods_anchors()
    missing = sorted({(str(f.relative_to(ROOT)), a) for f in user_visible_files()
                      for a in ANCHOR.findall(f.read_text(encoding="utf-8")) if a not in anchors})
    assert not missing, f"docs/methods.md has no heading for {missing}"


@pytest.mark.parametrize("name", ["methods.md"])
def test_linked_docs_exist(name):
    assert (ROOT / "docs" / name).is_file()
