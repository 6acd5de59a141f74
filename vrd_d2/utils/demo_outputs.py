"""Where the demo writes its files, and the rules that keep user files safe.

Per input image ``<name>`` (its file name, extension included, so ``pic.jpg`` and ``pic.png``
never share an output) the demo writes ``<name><suffix>`` for each suffix it renders (``.png``,
``.json``, ``.graph.png``, ``.dot``). :class:`OutputFolder` refuses to write over an input file
(by resolved path and by inode, also when the output folder is the input folder), over a file
another input of the same run already claimed, or over an existing file unless ``overwrite``; and
it writes all the files of an image or none of them (the rule of :mod:`vrd_d2.utils.safe_write`,
for a folder of outputs).
"""

import os
import tempfile
from typing import Dict, Iterable, List, Tuple

from .safe_write import inode as _inode
from .safe_write import new_file_mode

__all__ = ["OutputFolder", "output_name"]


def output_name(input_path: str, suffix: str) -> str:
    """``pic.jpg`` + ``.json`` -> ``pic.jpg.json``: the input's full file name plus ``suffix``."""
    return os.path.basename(input_path) + suffix


class OutputFolder:
    """
    The demo's output folder.

    Args:
        folder: created if missing; an existing non-folder is an error.
        protected: files never to be written over, whatever ``overwrite`` says (the input images,
            the ``--boxes`` file, the config, the weights).
        overwrite: replace outputs that exist from an earlier run.
    """

    def __init__(self, folder: str, protected: Iterable[str] = (), overwrite: bool = False):
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ValueError(f"--output {folder}: exists and is not a folder")
        os.makedirs(folder, exist_ok=True)
        self.folder = folder
        self.overwrite = overwrite
        self._protected_paths = {os.path.realpath(p) for p in protected}
        self._protected_inodes = {_inode(p) for p in protected if os.path.exists(p)}
        self._claimed: Dict[str, str] = {}  # resolved output path -> the input that claimed it

    def paths(self, input_path: str, suffixes: Iterable[str]) -> Dict[str, str]:
        """``suffix -> output path`` for ``input_path``."""
        return {s: os.path.join(self.folder, output_name(input_path, s)) for s in suffixes}

    def write(self, input_path: str, files: Dict[str, bytes]) -> List[str]:
        """
        Write ``files`` (``suffix -> content``) for ``input_path``: all of them, or (on any
        refusal or error) none. Each file goes to a temporary name in the folder first and is
        renamed into place only when every one of them is on disk.

        Returns:
            the paths written.

        Raises:
            FileExistsError: an output would replace a protected file, an output of another input
                of this run, or (without ``overwrite``) an existing file.
        """
        targets = self.paths(input_path, files)
        for path in targets.values():
            self._check(input_path, path)
        staged: List[Tuple[str, str]] = []
        done: List[str] = []
        try:
            for suffix, content in files.items():
                fd, tmp = tempfile.mkstemp(prefix=".demo-", suffix=".part", dir=self.folder)
                staged.append((tmp, targets[suffix]))
                with os.fdopen(fd, "wb") as f:
                    f.write(content)
                os.chmod(tmp, new_file_mode())  # mkstemp makes 0600; outputs get the usual mode
            for tmp, path in staged:
                os.replace(tmp, path)
                done.append(path)
        except BaseException:
            for path in [tmp for tmp, _ in staged] + done:  # neither the parts nor a half set stay
                if os.path.lexists(path):
                    os.remove(path)
            raise
        for path in done:
            self._claimed[os.path.realpath(path)] = input_path
        return done

    def _check(self, input_path: str, path: str) -> None:
        resolved = os.path.realpath(path)
        if resolved in self._protected_paths or (os.path.exists(path) and _inode(path) in self._protected_inodes):
            raise FileExistsError(
                f"{input_path}: output {path} is an input file of this run; " "choose another --output folder"
            )
        other = self._claimed.get(resolved)
        if other is not None:
            raise FileExistsError(
                f"{input_path}: output {path} was already written for {other} in this run "
                "(two inputs with the same file name); run them into separate folders"
            )
        if os.path.lexists(path) and not self.overwrite:
            raise FileExistsError(f"{input_path}: output {path} exists; pass --overwrite to replace it")
