"""The trailing config overrides of tools/reproduce.py, checked before any step is planned."""

from typing import Sequence

__all__ = ["PER_STAGE_KEYS", "check_reproduce_overrides"]

#: keys a trailing override may not set: each stage has its own (from --output-root and the stage before)
PER_STAGE_KEYS = ("OUTPUT_DIR", "MODEL.WEIGHTS")


def check_reproduce_overrides(opts: Sequence[str]) -> None:
    """The trailing overrides of tools/reproduce.py: KEY VALUE pairs, none of :data:`PER_STAGE_KEYS`
    (one folder or weights file for every stage would make each stage overwrite or reload the
    same files). A ValueError naming the override, also for ``--dry-run``."""
    opts = list(opts)
    if len(opts) % 2:
        raise ValueError(
            f"tools/reproduce.py: the config overrides must be KEY VALUE pairs, found {len(opts)} "
            f"words {opts} (the last key {opts[-1]!r} has no value)"
        )
    bad = [k for k in opts[::2] if k in PER_STAGE_KEYS]
    if bad:
        raise ValueError(
            f"tools/reproduce.py: override {bad[0]} is set per stage (OUTPUT_DIR under --output-root, "
            f"MODEL.WEIGHTS from the stage before); use --output-root instead"
        )
