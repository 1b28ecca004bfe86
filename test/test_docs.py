"""Documentation that users read stays honest: methods are named by their papers (never by this project's
internal paper numbers), every pointer into docs/methods.md lands on a heading, and the docs the README
links exist."""
from __future__ import annotations

import re
import shlex
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


@pytest.mark.parametrize("name", ["methods.md", "design.md", "benchmarks.md", "parameters.md"])
def test_linked_docs_exist(name):
    assert (ROOT / "docs" / name).is_file()


def test_readme_is_short_and_links_the_docs():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250, "README.md is for newcomers: move detail into docs/"
    for doc in ("methods.md", "design.md", "benchmarks.md", "parameters.md"):
        assert f"(docs/{doc})" in text and (ROOT / "docs" / doc).is_file(), doc
    assert "config/nav2_costmap_example.yaml" in text and "## Limitations" in text


def readme_commands() -> list[str]:
    """The `ood-monitor ...` examples in the README's code blocks, continuation lines joined, optional
    `[...]` parts and comments dropped, `a|b|c` alternatives reduced to the first."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    commands = []
    for line in (ln.strip() for block in blocks for ln in block.splitlines()):
        if not line.startswith("ood-monitor "):
            continue
        line = line.split("#", 1)[0]
        while re.search(r"\[[^\[\]]*\]", line):
            line = re.sub(r"\[[^\[\]]*\]", "", line)
        commands.append(re.sub(r"(\S+?)\|\S+", r"\1", line).strip())
    return commands


def test_readme_examples_parse_with_their_required_options():
    """Every README example names the options its command requires (argparse would refuse it)."""
    from ood_monitor.cli.main import build_parser

    commands = readme_commands()
    assert any(c.startswith("ood-monitor compress") for c in commands)
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(shlex.split(command)[1:])
        except SystemExit:
            pytest.fail(f"README example does not parse: {command}")
