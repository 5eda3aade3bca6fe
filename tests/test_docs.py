"""The documents people read: the README stays short, and every relative link in it and in docs/
leads somewhere (a file that exists, a heading that exists)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

README_MAX_LINES = 300
# The pages whose links are checked; RESULTS.md too, since the others link into its sections.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def prose(text: str) -> str:
    """The text outside fenced code blocks, where a bracket pair is not a link."""
    return FENCE.sub("", text)


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading shows its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, with the -1, -2 suffixes GitHub gives repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(prose(page.read_text())):
        slug = anchor(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target} (no heading #{fragment} in {resolved.name})")
    return broken


def test_anchor_follows_github_rules():
    assert anchor("## 9. `mode=benchmark`, compile checks".lstrip("# ")) == "9-modebenchmark-compile-checks"
    assert anchor("Fine-tune and deploy") == "fine-tune-and-deploy"
    assert anchor("An image-folder CIFAR-10") == "an-image-folder-cifar-10"


def test_readme_is_at_most_300_lines():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; the depth belongs in docs/"


def test_every_relative_link_resolves():
    assert (ROOT / "docs").is_dir() and len(PAGES) > 3
    broken = {page.relative_to(ROOT).as_posix(): links for page in PAGES if (links := broken_links(page))}
    assert not broken


def test_link_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Real heading\n")
    page = tmp_path / "page.md"
    page.write_text("[a](other.md#real-heading) [b](missing.md) [c](other.md#gone) [d](#here)\n\n## Here\n"
                    "```\n[e](in-code-not-a-link.md)\n```\n")
    assert broken_links(page) == ["missing.md (no such file)", "other.md#gone (no heading #gone in other.md)"]
