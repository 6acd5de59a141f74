"""Run-to-run bands of the shapes demo: mean / min / max of the headline figures by hand, and
--seeds/--threads on --quick runs (each run's own results.json against the band)."""

import datetime
import json
import os

import numpy as np
import pytest
from tools_loader import load_tool  # noqa: E402  (tests/ is on sys.path under pytest)

from vrd_d2_studies.shapes_demo import bands as shapes_bands
from vrd_d2_studies.shapes_demo import runner as shapes_demo


def _results(x):
    """Fake test results of one run: every figure of variant i is x + i."""
    res = {}
    for i, v in enumerate(shapes_demo.VARIANTS):
        res[v] = {
            "phrase_cls": {"R@50_kfree": x + i, "R@100_kfree": x + i + 0.5, "R@50_k1": x / 2 + i},
            "predcls": {"R@50_kfree": x + i + 0.25},
        }
    res[shapes_demo.FULL]["relationship"] = {"R@50_kfree": 2 * x}
    return res


def test_band_by_hand():
    runs = [shapes_bands.headline(_results(x)) for x in (10.0, 11.0, 15.0)]
    assert len(runs[0]) == 3 * len(shapes_demo.VARIANTS) + 1
    assert runs[0]["rank 1 | phrase_cls R@100"] == 11.5  # rank 1 is variant 1
    b = shapes_bands.band(runs)
    s = b["rank 1 | phrase_cls R@50"]
    assert (s["mean"], s["min"], s["max"]) == (pytest.approx(13.0), 11.0, 16.0)
    assert s["max_dev"] == pytest.approx(3.0)
    sg = b[f"{shapes_demo.FULL} | sgdet relationship R@50"]
    assert (sg["mean"], sg["max_dev"]) == (pytest.approx(24.0), pytest.approx(6.0))
    records = [
        {"seed": k, "threads": 1, "headline": r, "detector_visible_accuracy": 99.0, "seconds": 60.0}
        for k, r in enumerate(runs)
    ]
    table = shapes_bands.format_band_table(records, "cmd")
    assert "| rank 1 | 13.00 (11.00–16.00) | 13.50 (11.50–16.50) | 13.25 (11.25–16.25) | – |" in table
    assert "NOT every figure within ±3 points" in table  # sgdet is 6 points from its mean
    beside = shapes_bands.format_beside_band(runs[2], {"command": "cmd", "runs": records, "band": b})
    assert "| rank 1, phrase_cls R@50 | 16.00 | 13.00 (11.00–16.00) | yes |" in beside  # 3 points off
    assert f"| {shapes_demo.FULL}, sgdet relationship R@50 | 30.00 | 24.00 (20.00–30.00) | NO |" in beside
    with pytest.raises(ValueError, match="no runs"):
        shapes_bands.band([])


def test_effects_by_hand():
    """Each effect is the variant with the part minus the one without, in that run; the band
    counts the runs where it is above 0 and make demo prints a run's effects beside it."""
    results = [_results(x) for x in (10.0, 11.0, 15.0)]
    # variant i's figures are x + i: rank 1 is variant 1, rank 5 variant 4, rank 5 + X_sel 5, the full model 6
    results[1][shapes_demo.FULL]["phrase_cls"]["R@50_kfree"] = 11.0 + 5 - 0.5  # the prior loses 0.5 in run 2
    results[2]["rank 1 + X_sel + prior"]["phrase_cls"]["R@50_kfree"] = 15.0 + 2  # a tie (0) is not a gain
    runs = [shapes_bands.effects(r) for r in results]
    assert list(runs[0]) == [e[0] for e in shapes_bands.EFFECTS]
    assert runs[0] == {
        "rank 5 over rank 1": 3.0,
        "X_sel over rank 5": 1.0,
        "prior over rank 5 + X_sel": 1.0,
        "prior over rank 5 + X_sel, k = 1": 1.0,
        "prior over rank 5 + X_sel, R@100": 1.0,
        "prior over rank 1 + X_sel": 1.0,
    }
    assert runs[1]["prior over rank 5 + X_sel"] == -0.5 and runs[2]["prior over rank 1 + X_sel"] == 0.0
    b = shapes_bands.band(runs)
    prior5 = b["prior over rank 5 + X_sel"]
    assert (prior5["mean"], prior5["min"], prior5["max"], prior5["positive"]) == (pytest.approx(0.5), -0.5, 1.0, 2)
    assert b["prior over rank 1 + X_sel"]["positive"] == 2 and b["rank 5 over rank 1"]["positive"] == 3
    records = [
        {
            "seed": k,
            "threads": 1,
            "headline": shapes_bands.headline(r),
            "effects": e,
            "detector_visible_accuracy": 99.0,
            "seconds": 60.0,
        }
        for k, (r, e) in enumerate(zip(results, runs))
    ]
    table = shapes_bands.format_band_table(records, "cmd")
    assert "| prior over rank 5 + X_sel | +1.00 -0.50 +1.00 | +0.50 (-0.50 to +1.00) | 2 of 3 |" in table
    assert "| rank 5 over rank 1 | +3.00 +3.00 +3.00 | +3.00 (+3.00 to +3.00) | 3 of 3 |" in table
    # records without effects (a band file from before they were stored): no effects table
    without = [{k: v for k, v in r.items() if k != "effects"} for r in records]
    assert "effects" not in shapes_bands.format_band_table(without, "cmd")
    stored = {
        "command": "cmd",
        "runs": records,
        "band": shapes_bands.band([r["headline"] for r in records]),
        "effects": b,
    }
    beside = shapes_bands.format_beside_band(records[1]["headline"], stored, runs[1])
    assert "| prior over rank 5 + X_sel | -0.50 | +0.50 (-0.50 to +1.00), above 0 in 2 of 3 | NO |" in beside
    assert "| X_sel over rank 5 | +1.00 | +1.00 (+1.00 to +1.00), above 0 in 3 of 3 | yes |" in beside
    assert "effects" not in shapes_bands.format_beside_band(records[1]["headline"], stored)


def _run_updating_readme(tool, argv):
    """The tool's run with --update-readme on --quick runs: the library's README and band writing
    (the tool itself refuses --update-readme with --quick, tests/test_no_overwrite.py)."""
    args = tool.get_parser().parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    shapes_bands.run_cli(args)
    return 0


def test_seeds_and_threads_on_quick_runs(tmp_path):
    tool = load_tool("shapes_demo")
    readme = tmp_path / "RESULTS.md"
    readme.write_text("a\n<!-- shapes-demo:begin -->\nold\n<!-- shapes-demo:end -->\nb\n")
    band_file = tmp_path / "band.json"
    out = tmp_path / "out"
    rc = _run_updating_readme(
        tool,
        [
            "--quick",
            "--seeds",
            "0",
            "1",
            "--threads",
            "1",
            "--output",
            str(out),
            "--update-results",
            "--results-file",
            str(readme),
            "--band-file",
            str(band_file),
        ],
    )
    assert rc == 0
    stored = json.loads(band_file.read_text())
    assert [(r["seed"], r["threads"]) for r in stored["runs"]] == [(0, 1), (1, 1)]
    per_run = [json.loads((out / f"seed{s}_threads1" / "results.json").read_text()) for s in (0, 1)]
    for variant in shapes_demo.VARIANTS:
        values = [r["test"][variant]["phrase_cls"]["R@50_kfree"] for r in per_run]
        s = stored["band"][f"{variant} | phrase_cls R@50"]
        assert s["mean"] == pytest.approx(np.mean(values)) and (s["min"], s["max"]) == (min(values), max(values))
    for name, with_part, without, task, metric in shapes_bands.EFFECTS:  # each run's effects, by hand
        values = [r["test"][with_part][task][metric] - r["test"][without][task][metric] for r in per_run]
        assert [r["effects"][name] for r in stored["runs"]] == pytest.approx(values), name
        assert stored["effects"][name]["positive"] == sum(v > 0 for v in values), name
    for s in (0, 1):  # each run used its own seed
        cfg = (out / f"seed{s}_threads1" / "stage1_detector" / "config.yaml").read_text()
        assert f"SEED: {s}\n" in cfg
    table = (out / "bands.md").read_text().strip()
    # the section: one line naming the command, this machine's CPU, the runs' threads and today, then the table
    from vrd_d2_studies.results_doc import cpu_model

    line = (
        f"Command: `python tools/shapes_demo.py --seeds 0 1 --threads 1 --quick` · CPU: {cpu_model()} "
        f"({os.cpu_count()} cores) · threads: 1 · {datetime.date.today().isoformat()}"
    )
    assert readme.read_text() == f"a\n<!-- shapes-demo:begin -->\n{line}\n\n{table}\n<!-- shapes-demo:end -->\nb\n"
    assert "over 2 runs of `tools/shapes_demo.py --seeds 0 1 --threads 1 --quick`" in table
    # --reuse takes the finished runs as they are (same seed, threads, --quick) and makes the missing one
    first = {s: (out / f"seed{s}_threads1" / "results.json").stat().st_mtime_ns for s in (0, 1)}
    (out / "seed1_threads1" / "results.json").write_text(
        json.dumps(dict(per_run[1], threads=2))  # another thread count: that run is made again
    )
    # ... into another results section (through the deprecated flag names): the band make demo
    # compares with stays as it was
    readme.write_text(readme.read_text() + "<!-- other-seeds:begin -->\n<!-- other-seeds:end -->\n")
    before = (readme.read_text(), band_file.read_text())
    rc = _run_updating_readme(
        tool,
        ["--quick", "--reuse", "--seeds", "0", "1", "2", "--threads", "1", "--output", str(out)]
        + [
            "--band-file",
            str(band_file),
            "--update-readme",
            "--readme",
            str(readme),
            "--readme-section",
            "other-seeds",
        ],
    )
    assert rc == 0
    assert band_file.read_text() == before[1]
    kept = json.loads((tmp_path / "other-seeds.json").read_text())  # that band beside it, with its own runs
    assert kept == json.loads((out / "bands.json").read_text()) and len(kept["runs"]) == 3
    assert shapes_bands.section_band_file(str(band_file), "other-seeds") == str(tmp_path / "other-seeds.json")
    table3 = (out / "bands.md").read_text().strip()
    line3 = line.replace("--seeds 0 1 --threads", "--seeds 0 1 2 --threads")
    assert readme.read_text() == before[0].replace(
        "<!-- other-seeds:begin -->\n", f"<!-- other-seeds:begin -->\n{line3}\n\n{table3}\n"
    )
    assert (out / "seed0_threads1" / "results.json").stat().st_mtime_ns == first[0]
    redone = json.loads((out / "seed1_threads1" / "results.json").read_text())
    assert (redone["seed"], redone["threads"]) == (1, 1)
    assert json.loads((out / "seed2_threads1" / "results.json").read_text())["seed"] == 2
    bands = json.loads((out / "bands.json").read_text())
    assert [(r["seed"], r["threads"]) for r in bands["runs"]] == [(0, 1), (1, 1), (2, 1)]
    assert bands["runs"][0]["seconds"] == per_run[0]["seconds"]["total"]


def test_finished_run_must_match_the_number_of_restarts(tmp_path):
    from types import SimpleNamespace

    from vrd_d2_studies.shapes_demo.bands import _finished_run

    def finished(restarts):
        return _finished_run(str(tmp_path), 1, 2, SimpleNamespace(quick=False, restarts=restarts)) is not None

    n = shapes_demo.STAGE2_RESTARTS
    base = {"seed": 1, "threads": 2, "quick": False, "relation_images": shapes_demo.RELATION_IMAGES}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(dict(base, restarts=n, restarts_per_rank={"5": n, "1": 1})))
    assert finished(n) and finished(None)  # None: the default
    assert not finished(n + 1)
    # made before rank 1 trained once: every rank restarted `restarts` times
    path.write_text(json.dumps(dict(base, restarts=n)))
    assert not finished(n) and not finished(None)
    path.write_text(json.dumps(dict(base, restarts=1)))
    assert finished(1)  # one run per rank then is one now too
    path.write_text(json.dumps(base))  # made before restarts: one
    assert finished(None) == (n == 1)
    assert finished(1)


def test_finished_run_must_match_the_relation_images(tmp_path):
    """A run on other relation images is made again; results.json files from before
    --relation-images (no key, or None) were made on all the training images (= 0)."""
    from types import SimpleNamespace

    from vrd_d2_studies.shapes_demo.bands import _finished_run

    def finished(**kw):
        options = SimpleNamespace(quick=False, restarts=1, **kw)
        return _finished_run(str(tmp_path), 1, 2, options) is not None

    path = tmp_path / "results.json"
    base = {"seed": 1, "threads": 2, "quick": False, "restarts": 1}
    for made in ({}, {"relation_images": None}, {"relation_images": 0}):
        path.write_text(json.dumps(dict(base, **made)))
        assert finished(relation_images=0) and not finished() and not finished(relation_images=150), made
    path.write_text(json.dumps(dict(base, relation_images=shapes_demo.RELATION_IMAGES)))
    assert finished() and finished(relation_images=shapes_demo.RELATION_IMAGES) and not finished(relation_images=0)
    assert not finished(relation_images=shapes_demo.RELATION_IMAGES + 1)


def test_make_demo_prints_its_run_beside_a_band_of_the_same_settings_only(tmp_path, monkeypatch, capsys):
    """A single run is compared with the stored band only when both were made with the same
    relation images and restarts; otherwise it says so."""
    from types import SimpleNamespace

    res = _results(50.0)
    monkeypatch.setattr(shapes_demo, "run", lambda options: ({"test": res}, {}))
    options = SimpleNamespace(quick=False, seeds=None, threads=None, restarts=None, relation_images=None)
    options.band_file = str(tmp_path / "band.json")
    records = [
        {
            "seed": 0,
            "threads": 1,
            "headline": shapes_bands.headline(res),
            "effects": shapes_bands.effects(res),
            "detector_visible_accuracy": 99.0,
            "seconds": 1.0,
        }
    ]
    shapes_bands.save_band(records, "cmd", options.band_file, shapes_bands.settings(options))
    assert json.loads((tmp_path / "band.json").read_text())["settings"] == {
        "quick": False,
        "relation_images": shapes_demo.RELATION_IMAGES,
        "restarts_per_rank": {"5": shapes_demo.STAGE2_RESTARTS, "1": 1},
    }
    shapes_bands.run_cli(options)
    out = capsys.readouterr().out
    assert "This run beside the band of 1 runs (`cmd`)" in out
    assert "| rank 5 over rank 1 | +3.00 | +3.00 (+3.00 to +3.00), above 0 in 1 of 1 | yes |" in out
    for other in ({"relation_images": 0}, {"restarts": shapes_demo.STAGE2_RESTARTS + 1}):
        shapes_bands.run_cli(SimpleNamespace(**dict(vars(options), **other)))
        out = capsys.readouterr().out
        assert "beside the band" not in out and "was made with other settings" in out, other


def test_the_shipped_band_is_of_the_default_demo():
    """configs/Shapes/demo_band.json was made with make demo's settings (else make demo would not
    print its run beside it), and its band is the summary of its own runs."""
    from types import SimpleNamespace

    stored = shapes_bands.load_band()
    assert stored is not None
    default = SimpleNamespace(quick=False, restarts=None, relation_images=None)
    assert stored["settings"] == shapes_bands.settings(default)
    assert stored["command"] == "tools/shapes_demo.py --seeds 0 1 2 --threads 1 2"
    again = shapes_bands.band([r["headline"] for r in stored["runs"]])
    for key, s in stored["band"].items():
        assert s == pytest.approx(again[key]), key
    effects = shapes_bands.band([r["effects"] for r in stored["runs"]])
    assert list(stored["effects"]) == [e[0] for e in shapes_bands.EFFECTS]
    for key, s in stored["effects"].items():
        assert s == pytest.approx(effects[key]), key


def test_the_results_page_shows_the_shipped_bands():
    """docs/RESULTS.md's shapes-demo table (make demo's band) and its held-out one (seeds 3-5) are
    the ones the shipped band files' runs make (neither was edited without the other)."""
    import re
    from pathlib import Path

    from vrd_d2_studies.results_doc import split_provenance

    readme = (Path(shapes_bands.BAND_FILE).parents[2] / "docs" / "RESULTS.md").read_text()
    held_out = shapes_bands.section_band_file(shapes_bands.BAND_FILE, "shapes-demo-heldout")
    for name, path in (("shapes-demo", shapes_bands.BAND_FILE), ("shapes-demo-heldout", held_out)):
        stored = shapes_bands.load_band(path)
        section = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", readme, re.S)
        assert stored is not None and section is not None, name
        provenance, table = split_provenance(section.group(1))
        assert provenance is not None and stored["command"] in provenance, name  # the line naming the command
        assert table == shapes_bands.format_band_table(stored["runs"], stored["command"]), name
        assert stored["settings"] == shapes_bands.load_band()["settings"], name  # both bands: make demo's recipe
    assert shapes_bands.load_band(held_out)["command"] == "tools/shapes_demo.py --seeds 3 4 5 --threads 1 2"


def test_provenance_line_names_command_cpu_threads_and_date(tmp_path):
    """The line heading every written results section, and its reading back: a hand-written line
    with text after the date, or a table with no line, has no provenance."""
    from vrd_d2_studies.results_doc import provenance_line, replace_readme_section, split_provenance

    line = provenance_line("python tools/x.py --a 1", threads=[1, 2], date=datetime.date(2026, 1, 2))
    assert line.startswith("Command: `python tools/x.py --a 1` · CPU: ") and line.endswith(
        " · threads: 1 and 2 · 2026-01-02"
    )
    assert f"({os.cpu_count()} cores)" in line
    assert split_provenance(f"{line}\n\n| t |") == (line, "| t |")
    assert split_provenance("| t |\n| u |") == (None, "| t |\n| u |")
    assert split_provenance(line + " (25 minutes)\n\n| t |")[0] is None
    page = tmp_path / "RESULTS.md"
    page.write_text("x\n<!-- s:begin -->\nold\n<!-- s:end -->\n")
    replace_readme_section(str(page), "s", "| new |", line)
    assert page.read_text() == f"x\n<!-- s:begin -->\n{line}\n\n| new |\n<!-- s:end -->\n"
    assert [p.name for p in tmp_path.iterdir()] == ["RESULTS.md"]  # no temporary file left beside it
