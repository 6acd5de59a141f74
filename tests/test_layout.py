"""The library and the studies apart: no module of ``vrd_d2`` imports ``vrd_d2_studies`` (at module
level or inside a function), and no library module names README.md."""

import ast
from pathlib import Path

import pytest
from conftest import REPO

LIBRARY = sorted((REPO / "vrd_d2").rglob("*.py"))


def imported_modules(path: Path, root: Path = REPO):
    """Every module an ``import`` or ``from ... import`` anywhere in ``path`` names, absolute (relative
    imports resolved against the file's package)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield ".".join(base + ([node.module] if node.module else []))
            else:
                yield node.module


def test_imported_modules_resolves_relative_imports(tmp_path):
    """The walker itself: a relative import two levels up and a function-level import are found."""
    source = tmp_path / "vrd_d2" / "modeling" / "decode" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text("from ..cp_checks import a\nfrom . import b\ndef f():\n    import vrd_d2_studies.ablation\n")
    found = list(imported_modules(source, root=tmp_path))
    assert found == ["vrd_d2.modeling.cp_checks", "vrd_d2.modeling.decode", "vrd_d2_studies.ablation"]


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_library_never_imports_the_studies(path):
    bad = [m for m in imported_modules(path) if m == "vrd_d2_studies" or m.startswith("vrd_d2_studies.")]
    assert not bad, f"{path.relative_to(REPO)} imports {bad}: the library must not depend on the studies"


def test_library_names_no_readme():
    """README.md and the results pages are the studies' and the maintainers' to write, never the
    library's: no string in a library module (docstrings aside) names README."""
    offenders = []
    for path in LIBRARY:
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(owner.body[0].value)
            for owner in ast.walk(tree)
            if isinstance(owner, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and owner.body
            and isinstance(owner.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if "README" in node.value:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value[:60]!r}")
    assert not offenders, offenders
