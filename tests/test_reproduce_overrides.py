"""tools/reproduce.py's trailing overrides: KEY VALUE pairs, never OUTPUT_DIR or MODEL.WEIGHTS (set
per stage); refused before a step runs, also with --dry-run."""

import io

import pytest
from conftest import REPO_DIR as REPO  # noqa: E402
from tools_loader import load_tool  # noqa: E402

from vrd_d2.engine.pipeline import reproduce

reproduce_tool = load_tool("reproduce")


@pytest.mark.parametrize(
    "opts, message",
    [
        (["OUTPUT_DIR", "/tmp/one"], r"override OUTPUT_DIR is set per stage"),
        (["MODEL.VRD.TEST.PROTOCOL", "both", "MODEL.WEIGHTS", "w.pth"], r"override MODEL.WEIGHTS is set per stage"),
        (["MODEL.VRD.TEST.PROTOCOL"], r"KEY VALUE pairs, found 1 words .*'MODEL.VRD.TEST.PROTOCOL' has no value"),
    ],
)
def test_bad_overrides_are_refused_before_any_step(tmp_path, opts, message):
    ran, out = [], io.StringIO()
    for dry_run in (True, False):
        with pytest.raises(ValueError, match=message):
            reproduce("vrd", dry_run=dry_run, opts=opts, repo=str(REPO), output_root=str(tmp_path / "o"),
                      datasets_root=str(tmp_path / "d"), run=ran.append, out=out)  # fmt: skip
    assert ran == [] and out.getvalue() == "" and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit, match=message):
        reproduce_tool.main(["--dataset", "vrd", "--dry-run", *opts])


def test_good_overrides_reach_every_step(tmp_path):
    out = io.StringIO()
    commands = reproduce("vrd", dry_run=True, opts=["MODEL.VRD.TEST.PROTOCOL", "both"], repo=str(REPO),
                         output_root=str(tmp_path / "o"), out=out)  # fmt: skip
    assert commands and all(c[-2:] == ["MODEL.VRD.TEST.PROTOCOL", "both"] for c in commands)
