"""README.md and docs/*.md: every relative link (markdown links and images, #anchors included)
resolves to a file and a heading, and the README stays a newcomer's page (at most 250 lines)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
PAGES = [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))

# [text](target) and ![alt](target); the text may hold backticks or brackets one level deep
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose_lines(text: str):
    """(line number, line) of the lines outside fenced code blocks, inline code removed."""
    inside = False
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, re.sub(r"`[^`]*`", "``", line)


def heading_anchors(text: str) -> set:
    """GitHub's anchors of the headings of a markdown text: lower case, punctuation but - and _
    dropped, spaces to -, a repeated anchor suffixed -1, -2, ..."""
    anchors, seen = set(), {}
    for _, line in _prose_lines(text.replace("`", "")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(page: Path) -> list:
    """'page:line: target (why)' for each relative link of ``page`` that does not resolve."""
    text = page.read_text(encoding="utf-8")
    broken = []
    for number, line in _prose_lines(text):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            where = f"{page.name}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no file {dest})")
            elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text(encoding="utf-8")):
                broken.append(f"{where} (no heading #{anchor} in {dest.name})")
    return broken


def test_the_link_checker_finds_broken_links_and_anchors(tmp_path):
    page = tmp_path / "PAGE.md"
    (tmp_path / "OTHER.md").write_text("# Other page\n\n## The `x` section: a, b & c\n\n## Twice\n\n## Twice\n")
    page.write_text(
        "# Page\n\n"
        "[ok](OTHER.md) [ok](OTHER.md#the-x-section-a-b--c) [ok](OTHER.md#twice-1) [ok](#page)\n"
        "![ok](OTHER.md) [web](https://example.com/nothing.md)\n"
        "```\n[in code](MISSING.md)\n```\n"
        "`[inline](MISSING.md)`\n"
        "[missing file](MISSING.md) [missing anchor](OTHER.md#nope) ![missing image](pic.png)\n"
    )
    assert broken_links(page) == [
        f"PAGE.md:9: MISSING.md (no file {tmp_path / 'MISSING.md'})",
        "PAGE.md:9: OTHER.md#nope (no heading #nope in OTHER.md)",
        f"PAGE.md:9: pic.png (no file {tmp_path / 'pic.png'})",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_docs_pages_are_there_and_linked_from_the_readme():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in ("RESULTS", "REPRODUCING", "SHAPES_DEMO", "EVALUATION", "DATASETS", "DESIGN"):
        assert (REPO / "docs" / f"{name}.md").is_file(), name
        assert f"](docs/{name}.md" in readme, name
    assert "](docs/demo/astronaut.png.png)" in readme  # the demo picture


def test_readme_is_at_most_250_lines():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md: {len(lines)} lines, at most {README_MAX_LINES}"
