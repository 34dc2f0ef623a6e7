"""`metalearner run` end to end on the tiny preset: every stage, the cache (skip, resume,
rerun a changed stage and what reads it), the report in a real browser, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from metalearner.errors import MetalearnerWarning
from metalearner.parallel import InlineExecutor
from metalearner.pipeline import STAGES, get_preset, keys, read_stage, run_pipeline
from metalearner.pipeline import run as pipeline_run

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("METALEARNER_TEST_ARTIFACTS", ROOT / "build" / "test-artifacts"))
sys.path.insert(0, str(Path(__file__).parent))
from browser import find_browser, open_page  # noqa: E402


def _run(cfg, out, data):
    return run_pipeline(cfg, out, InlineExecutor(), data_dir=str(data), progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    """The tiny pipeline, interrupted in the mirror stage, then resumed."""
    out = tmp_path_factory.mktemp("pipeline")
    cfg = get_preset("tiny")
    real = pipeline_run.run_mirror

    def boom(*a, **k):
        (a[1] / "partial.txt").write_text("started")
        raise RuntimeError("killed in the mirror stage")

    pipeline_run.run_mirror = boom
    try:
        with pytest.raises(RuntimeError, match="killed"):
            _run(cfg, out, shared_data)
    finally:
        pipeline_run.run_mirror = real
    interrupted = {n: read_stage(out, n) for n in STAGES}
    interrupted["report.html"] = (out / "report.html").exists()
    from metalearner.report.pipeline import write_pipeline_report

    interrupted["partial report"] = write_pipeline_report(out)["md"].read_text()  # `metalearner report` meanwhile
    resumed = _run(cfg, out, shared_data)  # not refused for the report/figures that wrote
    return out, cfg, interrupted, resumed


def test_interrupted_run_resumes_where_it_stopped(tiny):
    out, cfg, interrupted, resumed = tiny
    assert interrupted["zoo"]["status"] == interrupted["dataset"]["status"] == "complete"
    assert interrupted["mirror"]["status"] == "interrupted" and "killed" in interrupted["mirror"]["error"]
    assert interrupted["bench"] is None and not interrupted["report.html"]
    partial = interrupted["partial report"]
    assert "This report is partial: mirror (interrupted), meta_train (not run), bench (not run)" in partial
    assert "The zoo" in partial and "The benchmark" not in partial
    cached = {n: r["cached"] for n, r in resumed.stages.items()}
    assert cached == {"zoo": True, "dataset": True, "mirror": False, "meta_train": False, "bench": False, "report": False}
    ks = keys(cfg)
    for n in STAGES:
        rec = read_stage(out, n)
        assert rec is not None, n
        assert rec["status"] == "complete" and rec["key"] == ks[n] and rec["wall_s"] >= 0
        assert rec["config"] == json.loads(json.dumps(pipeline_run.plain(rec["config"])))
    assert (out / "mirror" / "partial.txt").exists()  # same key: resumed in its folder, not wiped
    assert (out / "mirror" / "smooth_loss" / "model.safetensors").exists() or any((out / "mirror" / "smooth_loss").iterdir())
    assert (out / "bench" / "results.json").exists() and (out / "meta_train" / "opt2vec.safetensors").exists()
    assert json.loads((out / "pipeline.json").read_text())["preset"] == "tiny"


def test_unchanged_rerun_skips_everything_but_the_report(tiny, shared_data):
    out, cfg, _, _ = tiny
    (out / "report.html").unlink()
    stage = out / "report" / "stage.json"
    stage.write_text(json.dumps({**json.loads(stage.read_text()), "wall_s": 1e6}))  # a complete build that took long
    again = _run(cfg, out, shared_data)
    assert all(r["cached"] for name, r in again.stages.items() if name != "report")
    assert not again.stages["report"]["cached"] and (out / "report.html").exists()  # rebuilt, seconds
    assert again.stages["report"]["wall_s"] < 1e5  # its own time, not added to the last build's


def test_a_stage_folder_the_pipeline_did_not_make_is_refused_untouched(tmp_path, shared_data):
    from metalearner.errors import ConfigError

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not make"):
        _run(get_preset("tiny"), tmp_path, shared_data)
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine" and not (tmp_path / "zoo").exists()
    (tmp_path / "report" / "notes.txt").unlink()
    (tmp_path / "zoo").write_text("a file")
    with pytest.raises(ConfigError, match="is a file"):
        _run(get_preset("tiny"), tmp_path, shared_data)


def test_changed_stage_reruns_it_and_what_reads_it(tiny, shared_data):
    out, cfg, _, _ = tiny
    before = {n: read_stage(out, n)["key"] for n in STAGES}
    changed = cfg.replace_stage("mirror", epochs=2)
    with pytest.warns(MetalearnerWarning) as warned:
        res = _run(changed, out, shared_data)
    assert [str(w.message) for w in warned if w.category is MetalearnerWarning] == [
        f"{out / 'mirror'} was made with another config (or from other inputs): its results are replaced"]
    ran = {n for n, r in res.stages.items() if not r["cached"]}
    assert ran == {"mirror", "report"}  # the zoo, dataset, meta-training and benchmark do not read the mirror
    assert not (out / "mirror" / "partial.txt").exists()  # a changed key starts afresh
    after = {n: read_stage(out, n)["key"] for n in STAGES}
    assert [n for n in STAGES if before[n] != after[n]] == ["mirror", "report"]
    assert read_stage(out, "mirror")["config"]["epochs"] == 2
    # a changed zoo changes every stage that reads it, directly or not
    ks = keys(cfg.replace_stage("zoo", spec={**cfg.zoo.spec, "description": "changed"}))
    assert [n for n in STAGES if ks[n] != before[n]] == ["zoo", "dataset", "mirror", "report"]
    with pytest.warns(MetalearnerWarning, match="mirror was made with another config"):
        _run(cfg, out, shared_data)  # back to the preset for the tests below


def test_report_rebuilds_from_artifacts(tiny, capsys):
    from metalearner.cli import app
    from typer.testing import CliRunner

    out, *_ = tiny
    (out / "report.html").unlink()
    res = CliRunner().invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for section in ("The zoo", "The mirror", "The learned optimizer", "The benchmark", "Verdict"):
        assert section in html and section in md
    assert "http://" not in html and "https://" not in html and html.count("data:image/png;base64,") >= 8
    assert "did NOT" in md or "does NOT" in md or "WINS" in md  # the verdict says where it did (not) help


def test_a_corrupt_stage_file_is_one_line(tiny, tmp_path):
    import shutil

    from metalearner.errors import DataError
    from metalearner.report.pipeline import write_pipeline_report

    out, *_ = tiny
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "mirror" / "scores.json").write_text('{"scores": {}}')  # valid JSON, not what the stage wrote
    with pytest.raises(DataError, match="scores.json is not what its stage writes \\(no scores.smooth_loss\\)"):
        write_pipeline_report(copy)
    (copy / "mirror" / "scores.json").write_text("not json")
    with pytest.raises(DataError, match="scores.json is not valid JSON"):
        write_pipeline_report(copy)


def test_report_in_a_real_browser(tiny):
    browser = find_browser()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing (.ci/run installs it)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    out, *_ = tiny
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "pipeline_report.png"
    page = open_page(out / "report.html", shot, browser)
    assert page["title"] == "metalearner report"
    assert len(page["images"]) >= 8 and all(i["complete"] and i["w"] > 0 for i in page["images"]), page["images"]
    assert page["errors"] == []
    assert shot.stat().st_size > 50_000 and page["size"][1] > 3000


def test_command_line_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from metalearner import cli

    def main(*args):
        monkeypatch.setattr(sys, "argv", ["metalearner", *args])
        with pytest.raises(SystemExit) as e:
            cli.main()
        return e.value.code, capsys.readouterr().err.strip()

    code, err = main("run", "--preset", "huge", "--out", str(tmp_path))
    assert code == 2 and err.startswith("error: unknown preset 'huge'") and len(err.splitlines()) == 1
    code, err = main("report", str(tmp_path))
    assert code == 2 and "no completed pipeline stage" in err
    try:
        import ray  # noqa: F401
    except ImportError:
        code, err = main("run", "--preset", "tiny", "--executor", "ray", "--out", str(tmp_path / "r"))
        assert code == 2 and "ray" in err.lower() and len(err.splitlines()) == 1
        assert not (tmp_path / "r").exists()  # failed before any work
    import torch

    if not torch.cuda.is_available():
        code, err = main("run", "--preset", "tiny", "--device", "cuda", "--out", str(tmp_path / "c"))
        assert code == 2 and "no GPU" in err and not (tmp_path / "c").exists()
