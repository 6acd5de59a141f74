"""Whether a finished run's file is whole: a checkpoint a kill or a full disk cut short, or an
evaluation file left half-written, must not count as a finished step (``tools/reproduce.py``).
Each check returns None for a good file, else what is wrong with it (naming it), for the log."""

import json
import os
import zipfile
from typing import Optional

__all__ = ["checkpoint_problem", "evaluation_problem", "resumes_from_final"]


def checkpoint_problem(path: str) -> Optional[str]:
    """What is wrong with ``path`` as a ``torch.save`` checkpoint (zip format), None if nothing."""
    # The zip's central directory, at its end, is written last: a truncated or empty file has none.
    # Reading the member names costs milliseconds where unpickling a VGG16 would take seconds.
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{path}: not a complete torch checkpoint ({e})"
    if not any(n.endswith("/data.pkl") for n in names):
        return f"{path}: a zip file without torch's data.pkl"
    return None


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _tasks_problem(where: str, results) -> Optional[str]:
    """None when ``results`` is a non-empty dict of task -> metric -> number."""
    if not isinstance(results, dict) or not results:
        return f"{where} is not a non-empty dict of tasks"
    for task, metrics in results.items():
        if not isinstance(metrics, dict) or not all(_is_number(v) for v in metrics.values()):
            return f'{where}/"{task}" is not a dict of metric values'
    return None


def evaluation_problem(path: str) -> Optional[str]:
    """What is wrong with ``path`` as a ``vrd_evaluation.json``: json holding ``results``, a
    non-empty dict of task -> metric -> number (one protocol) or, under the protocol "both"
    (``"protocol": "both"`` in the file), of protocol -> task -> metric -> number; None if nothing."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        return f"{path}: not json ({e})"
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        return f'{path}: no "results" dict of tasks'
    if data.get("protocol") == "both":
        for protocol, tasks in results.items():
            problem = _tasks_problem(f'"results"/"{protocol}"', tasks)
            if problem:
                return f"{path}: {problem}"
        return None
    problem = _tasks_problem('"results"', results)
    return f"{path}: {problem}" if problem else None


def resumes_from_final(output_dir: str) -> bool:
    """Whether ``--resume`` in ``output_dir`` would load its ``model_final.pth`` (``last_checkpoint``
    names it): then a corrupt final checkpoint cannot be resumed from, only trained again."""
    try:
        with open(os.path.join(output_dir, "last_checkpoint"), "rb") as f:
            return f.read().strip() == b"model_final.pth"
    except OSError:
        return False
