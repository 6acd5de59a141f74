"""Keep the results page's tables (docs/RESULTS.md) equal to what the commands that produce them print."""

import re

__all__ = ["replace_readme_section", "check_readme_section"]


def _section(path: str, marker: str):
    """(the page's text, the pattern of its ``marker`` section, the begin and end markers); a
    ValueError naming the file if the markers are missing."""
    with open(path) as f:
        readme = f.read()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(readme):
        raise ValueError(f"{path}: markers {begin} ... {end} not found")
    return readme, pattern, begin, end


def check_readme_section(path: str, marker: str) -> None:
    """A ValueError naming the file unless ``path`` has the section ``marker`` (before a long run
    whose table would go there)."""
    _section(path, marker)


def replace_readme_section(path: str, marker: str, text: str) -> None:
    """Replace what lies between ``<!-- {marker}:begin -->`` and ``<!-- {marker}:end -->`` in
    ``path`` by ``text``; a ValueError naming the file if the markers are missing."""
    readme, pattern, begin, end = _section(path, marker)
    readme = pattern.sub(lambda _: f"{begin}\n{text.strip()}\n{end}", readme, count=1)
    with open(path, "w") as f:
        f.write(readme)
