"""Import a script of tools/ as a module (tools/ is not a package)."""

import importlib.util
import os

from conftest import REPO_DIR as REPO  # noqa: E402


def load_tool(name: str):
    """``tools/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"vrd_tool_{name}", os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
