"""Writing a file a user named (``--output``, ``--json``) without losing one of theirs.

The rule every tool follows: an existing file is replaced only with ``--overwrite``, a file the
run reads is never replaced (compared by resolved path and by inode, so a symlink or hard link to
an input counts as the input), and the new content goes to a temporary file of its own in the
output's folder, renamed into place once complete: a killed run leaves the old file or the new
one, never half of one, and no fixed ``X.tmp`` name that could be someone's file.

:class:`vrd_d2.utils.demo_outputs.OutputFolder` applies the same rule to the demo's folder of
per-image outputs.
"""

import contextlib
import os
import tempfile
from typing import Iterable, Optional, Tuple

__all__ = [
    "check_output_path",
    "same_file",
    "inode",
    "atomic_open",
    "atomic_write_text",
    "atomic_write_bytes",
    "dataset_files",
    "new_file_mode",
]


def new_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file (0666 less the umask); mkstemp makes 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def inode(path: str) -> Tuple[int, int]:
    """(device, inode) of ``path``."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def same_file(path: str, other: str) -> bool:
    """Whether ``path`` and ``other`` name one file: the same resolved path, or (both existing)
    the same inode, as for a hard link."""
    if os.path.realpath(path) == os.path.realpath(other):
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:  # one of them does not exist
        return False


def check_output_path(
    path: str, inputs: Iterable[Optional[str]] = (), overwrite: bool = False, flag: str = "--output"
) -> None:
    """Refuse to write ``path`` (the value of ``flag``) over one of ``inputs`` (whatever
    ``overwrite`` says), over a folder, or over an existing file without ``overwrite``.

    Args:
        path: the file the tool is about to write.
        inputs: the files this run reads; None and "" are skipped.
        overwrite: the tool's ``--overwrite``.
        flag: the option that named ``path``, for the message.

    Raises:
        FileExistsError: naming ``flag``, ``path`` and, for an input, the input.
    """
    for source in inputs:
        if source and same_file(path, source):
            raise FileExistsError(
                f"{flag} {path}: is {source}, a file this run reads; it is never written over "
                f"(not even with --overwrite): choose another file"
            )
    if os.path.isdir(path):
        raise FileExistsError(f"{flag} {path}: is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{flag} {path}: exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w"):
    """``open(path, mode)`` for writing, through a temporary file ``.<name>.*`` in ``path``'s
    folder that replaces ``path`` only when the block ends without an error (else it is removed).
    The folder is made if missing. ``mode``: "w" or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', found {mode!r}")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_open`."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_open`."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def dataset_files(metadata) -> list:
    """The files a registered dataset is read from, as far as its metadata tells: every metadata
    value that is an existing file (``json_file``, ``gt_mat``, ``image_path_mat``, ...) and the
    files directly in its ``root`` folder (the annotation files of VRD, VG150). ``metadata``: a
    detectron2 Metadata or a dict."""
    values = metadata.as_dict() if hasattr(metadata, "as_dict") else dict(metadata)
    files = [v for v in values.values() if isinstance(v, str) and os.path.isfile(v)]
    root = values.get("root")
    if isinstance(root, str) and os.path.isdir(root):
        files += [os.path.join(root, n) for n in sorted(os.listdir(root)) if os.path.isfile(os.path.join(root, n))]
    return files
