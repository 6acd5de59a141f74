"""Keep the results page's tables (docs/RESULTS.md) equal to what the commands that produce them
print: each section between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` is written whole by its
command, headed by one line naming the command, the CPU model, the threads and the date."""

import datetime
import os
import platform
import re
import shlex
import sys
from typing import Optional, Tuple

import torch

from vrd_d2.utils.safe_write import atomic_write_text

__all__ = [
    "replace_readme_section",
    "check_readme_section",
    "provenance_line",
    "split_provenance",
    "cpu_model",
    "invocation",
]

_PROVENANCE = re.compile(r"^Command: `.*` · CPU: .* · threads: .* · \d{4}-\d{2}-\d{2}$")


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


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` gives it (/proc/cpuinfo), else the platform's."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def invocation() -> str:
    """The command line of this process as a user would type it (``python tools/x.py ...``)."""
    return shlex.join(["python"] + [os.path.relpath(sys.argv[0]) if sys.argv[0] else ""] + sys.argv[1:])


def provenance_line(command: str, threads=None, date: Optional[datetime.date] = None) -> str:
    """``Command: `...` · CPU: <model> (<n> cores) · threads: <t> · <YYYY-MM-DD>``; ``threads`` a
    number, a list of them (a band over thread counts) or None (torch's current count)."""
    if threads is None:
        threads = torch.get_num_threads()
    if isinstance(threads, (list, tuple)):
        threads = " and ".join(map(str, threads))
    date = date or datetime.date.today()
    return (
        f"Command: `{command}` · CPU: {cpu_model()} ({os.cpu_count()} cores) · threads: {threads} · {date.isoformat()}"
    )


def split_provenance(section: str) -> Tuple[Optional[str], str]:
    """(the provenance line heading a written section, or None; the rest of the section)."""
    first, _, rest = section.partition("\n")
    if _PROVENANCE.match(first):
        return first, rest.lstrip("\n")
    return None, section


def replace_readme_section(path: str, marker: str, text: str, provenance: Optional[str] = None) -> None:
    """Replace what lies between ``<!-- {marker}:begin -->`` and ``<!-- {marker}:end -->`` in
    ``path`` by ``provenance`` (:func:`provenance_line`, when given), a blank line and ``text``; a
    ValueError naming the file if the markers are missing. Written through a temporary file."""
    readme, pattern, begin, end = _section(path, marker)
    body = text.strip() if provenance is None else f"{provenance}\n\n{text.strip()}"
    readme = pattern.sub(lambda _: f"{begin}\n{body}\n{end}", readme, count=1)
    atomic_write_text(path, readme)
