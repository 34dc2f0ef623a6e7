"""A tiny suite end to end: waves, targets, the budget rule, resume, the report."""

import dataclasses
import json
import math

import pytest

import metalearner.bench.runner as runner
from metalearner.bench import Bench, Cell, Suite, load_results, results_dir, run_suite, select
from metalearner.bench.protocol import SUITES, _mlp
from metalearner.errors import ConfigError, MetalearnerError
from metalearner.parallel import InlineExecutor

TINY = Suite(
    name="tiny",
    cells=(Cell("moons/mlp-1x16-relu", _mlp("moons", 1, 16, "relu")), Cell("digits/mlp-1x16-tanh", _mlp("digits", 1, 16, "tanh"))),
    methods=("adam", "adamw_cosine", "adam+controller"),
    seeds=2,
    reference_epochs=3,
    budgets=(1, 2, 3),
    evals_per_epoch=2,
)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    calls = []
    original = runner.run_job

    def counting(job):
        calls.append(job)
        return original(job)

    runner.run_job = counting
    try:
        results = run_suite(TINY, out, InlineExecutor(), progress=False)
    finally:
        runner.run_job = original
    return out, results, calls


def test_every_job_runs_once_and_the_rulesets_share_identical_runs(finished):
    out, results, calls = finished
    keys = [runner.job_key(j) for j in calls]
    assert len(keys) == len(set(keys)) == len(list((out / "jobs").glob("*.json")))
    # tuning: 3 methods x 3 lrs per cell; scoring: 3 methods x 2 seeds x 2 rulesets, minus runs shared
    # by the rulesets (a tuned lr equal to the default is the same job)
    n_tuning = 2 * 3 * 3
    assert n_tuning + 2 * 3 * 2 <= len(calls) <= n_tuning + 2 * 3 * 2 * 2


def test_target_is_the_lower_median_of_tuned_adam_at_the_reference_budget(finished):
    out, results, _ = finished
    for name, cell in results["cells"].items():
        tuned = cell["rulesets"]["tuned"]["adam"]
        best = max(cell["tuning"]["adam"], key=lambda t: t["val_acc"])
        assert tuned["lr"] == best["lr"]
        finals = sorted(s["val_acc"] for s in tuned["seeds"])
        assert cell["target"] == finals[0]  # 2 seeds: the lower one, which both reach (their mean, only one)
        assert tuned["summary"]["epochs_to_target"] < float("inf")
        for s in tuned["seeds"]:
            assert s["curve"][-1][0] == pytest.approx(TINY.reference_epochs)
            assert s["curve"][-1][1] == s["val_acc"]


def test_epochs_to_target_follow_the_curves_and_the_budget_rule(finished):
    out, results, _ = finished
    for cell in results["cells"].values():
        t = cell["target"]
        for ruleset in ("self_tuning", "tuned"):
            for m, entry in cell["rulesets"][ruleset].items():
                for s in entry["seeds"]:
                    reach = [row[0] for row in s["curve"] if row[1] >= t]
                    if m == "adamw_cosine":  # budget-aware: the smallest budget whose own run reached the target
                        hits = [b["budget"] for b in s["budget_runs"] if b["reached"]]
                        assert s["epochs_to_target"] == (min(hits) if hits else math.inf)
                        assert bool(reach) == (TINY.reference_epochs in hits)
                        tried = [b["budget"] for b in s["budget_runs"]][1:]
                        assert tried == sorted(tried) and (not hits or max(tried, default=0) <= min(hits) or not tried)
                    else:
                        assert s["epochs_to_target"] == (reach[0] if reach else math.inf)


def test_rerun_resumes_without_training(finished, monkeypatch):
    out, results, _ = finished

    def boom(job):
        raise AssertionError("a finished job was run again")

    monkeypatch.setattr(runner, "run_job", boom)
    again = run_suite(TINY, out, InlineExecutor(), progress=False)
    assert again["cells"].keys() == results["cells"].keys()
    assert again["profile_scores"] == results["profile_scores"]


def test_a_failed_job_keeps_the_finished_ones_and_a_rerun_completes(tmp_path, monkeypatch):
    small = Suite(name="one", cells=TINY.cells[:1], methods=("adam",), seeds=1, reference_epochs=1, budgets=(1,))
    original = runner.run_job
    state = {"n": 0}

    def flaky(job):
        state["n"] += 1
        if state["n"] == 2:
            raise RuntimeError("worker died")
        return original(job)

    monkeypatch.setattr(runner, "run_job", flaky)
    with pytest.raises(MetalearnerError, match="1 benchmark job"):
        run_suite(small, tmp_path, InlineExecutor(), progress=False)
    kept = len(list((tmp_path / "jobs").glob("*.json")))
    assert kept == 3  # wave 1: 3 tuning jobs + the self-tuning run; one failed
    monkeypatch.setattr(runner, "run_job", original)
    results = run_suite(small, tmp_path, InlineExecutor(), progress=False)
    assert len(list((tmp_path / "jobs").glob("*.json"))) >= 3
    assert math.isfinite(results["cells"][small.cells[0].name]["target"])


def test_report_and_results_file(finished, tmp_path):
    out, results, _ = finished
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "Verdict" in html
    for name in results["cells"]:
        assert name in md
    for fig in ("curves.png", "epochs_to_target.png", "profiles.png"):
        assert (out / "figures" / fig).stat().st_size > 1000
    back = load_results(out)
    assert json.loads((out / "results.json").read_text())["protocol"]["name"] == "tiny"
    cut = {k: v for k, v in json.loads((out / "results.json").read_text()).items() if k != "methods"}
    (tmp_path / "cut.json").write_text(json.dumps(cut))
    with pytest.raises(ConfigError, match="is not a benchmark results file \\(no methods\\)"):
        load_results(tmp_path / "cut.json")
    for name, cell in results["cells"].items():
        for r in ("self_tuning", "tuned"):
            for m, e in cell["rulesets"][r].items():
                assert back["cells"][name]["rulesets"][r][m]["summary"]["epochs_to_target"] == e["summary"]["epochs_to_target"]
    assert set(back["meta_training"]) == {"opt2vec", "controller", "learned"}
    # the shipped optimizers meta-trained on MNIST-1D and synthetic MLPs of width 48-192 (the model card)
    assert back["meta_training"]["opt2vec"]["datasets"] == ["mnist1d", "synthetic"]
    assert back["cells"]["moons/mlp-1x16-relu"]["seen_in_meta_training"] == {"data": False, "architecture": False}


def test_a_restricted_run_reuses_the_directory_and_keeps_what_it_holds(finished, monkeypatch):
    out, results, _ = finished

    def boom(job):
        raise AssertionError("a finished job was run again")

    monkeypatch.setattr(runner, "run_job", boom)
    whole = (out / "results.json").read_text()
    part = select(TINY, methods="adam+controller, adam", cells=["digits/mlp-1x16-tanh"])
    assert part.methods == ("adam", "adam+controller") and [c.name for c in part.cells] == ["digits/mlp-1x16-tanh"]
    again = run_suite(part, out, InlineExecutor(), progress=False)
    assert list(again["cells"]) == ["digits/mlp-1x16-tanh"]
    for r in ("self_tuning", "tuned"):
        for m in part.methods:
            assert again["cells"]["digits/mlp-1x16-tanh"]["rulesets"][r][m] == results["cells"]["digits/mlp-1x16-tanh"]["rulesets"][r][m]
    # the directory still holds, and reports, the whole suite; the part's results go beside it
    assert Suite.from_dict(json.loads((out / "suite.json").read_text())) == TINY
    assert (out / "results.json").read_text() == whole
    part_dir = results_dir(part, out)
    assert part_dir.parent == out / "parts" and list(load_results(part_dir)["cells"]) == ["digits/mlp-1x16-tanh"]
    assert (part_dir / "report.html").is_file() and results_dir(TINY, out) == out


def test_select_refuses_names_the_suite_lacks():
    with pytest.raises(ConfigError, match="no method nope; choose from adam, adamw_cosine, adam\\+controller"):
        select(TINY, methods="adam,nope")
    with pytest.raises(ConfigError, match="no cell mnist/x"):
        select(TINY, cells="mnist/x")
    with pytest.raises(ConfigError, match="reference method 'adam' must be one of"):
        select(TINY, methods="adamw_cosine")
    assert select(TINY) is TINY


def test_another_suite_in_the_same_directory_is_refused(finished):
    out, _, _ = finished
    other = Suite(name="tiny", cells=TINY.cells[:1], methods=("adam",), seeds=1, reference_epochs=3, budgets=(1, 2, 3))
    with pytest.raises(MetalearnerError, match="different suite \\(tiny; seeds, evals_per_epoch differ\\)"):
        Bench(other, out)
    reworded = dataclasses.replace(TINY, notes=("described anew",),  # notes and roles are not protocol: the results stay usable
                                   cells=(dataclasses.replace(TINY.cells[0], role="in-family"), *TINY.cells[1:]))
    Bench(reworded, out)
    assert runner._union(TINY, reworded, out) == reworded
    (out / "suite.json").write_text((out / "suite.json").read_text().replace('"seeds"', '"n_seeds"'))
    try:
        with pytest.raises(MetalearnerError, match="suite this version cannot read"):
            Bench(TINY, out)
    finally:
        (out / "suite.json").write_text((out / "suite.json").read_text().replace('"n_seeds"', '"seeds"'))


def test_suite_validation():
    with pytest.raises(ConfigError, match="budgets"):
        Suite(name="x", cells=TINY.cells, methods=("adam",), reference_epochs=3, budgets=(1, 2))
    with pytest.raises(ConfigError, match="budget-aware"):
        Suite(name="x", cells=TINY.cells, methods=("adam", "adamw_cosine"), reference_method="adamw_cosine")
    with pytest.raises(ConfigError, match="unknown method"):
        Suite(name="x", cells=TINY.cells, methods=("adam", "nope"))
    assert {"quick", "full"} <= set(SUITES)
    full = SUITES["full"]
    assert full.seeds >= 5 and full.reference_epochs == 10 and full.budgets == (1, 2, 3, 4, 5, 6, 8, 10)


def test_the_dev_suite_that_chooses_weights_shares_no_network_with_the_benchmark():
    """``dev`` chooses learned_sf weights (learned_dev.py --ttt): none of its cells may be a
    benchmark cell, or choosing on it would tune on the benchmark."""
    import json

    dev = SUITES["dev"]
    as_json = lambda c: json.dumps(c.task.to_dict(), sort_keys=True)  # noqa: E731
    others = [suite for name, suite in SUITES.items() if name != "dev"]
    assert dev.cells and not {as_json(c) for c in dev.cells} & {as_json(c) for suite in others for c in suite.cells}
    assert not {c.name for c in dev.cells} & {c.name for suite in others for c in suite.cells}
    assert "learned_sf" in dev.methods and dev.reference_epochs == SUITES["full"].reference_epochs


def test_a_shift_of_any_size_counts_as_unseen_data():
    from metalearner.bench.summary import meta_training_exposure, seen

    exposure = meta_training_exposure()
    for options, shifted in (({}, False), ({"mean": 1.0}, True), ({"scale": 1.0}, False), ({"scale": 2.0}, True), ({"noise": 0.0}, False)):
        task = _mlp("synthetic", 2, 64, "relu", **options).to_dict()
        assert seen(task, exposure)["data"] is not shifted, options
    # architectures: the meta-training widths (48, 96, 192) are seen, the benchmark's are not
    assert seen(_mlp("synthetic", 2, 96, "relu").to_dict(), exposure) == {"data": True, "architecture": True}
    assert seen(_mlp("synthetic", 2, 64, "relu").to_dict(), exposure)["architecture"] is False


def test_shift_verdict_says_never_reached_instead_of_a_rank(finished):
    """A method that never reaches a shift cell's target gets no rank there (a rank among the
    methods that did would read as a placing)."""
    import copy

    from metalearner.report.bench import verdict

    _, results, _ = finished
    r = copy.deepcopy(results)
    a, b = list(r["cells"])
    r["cells"][a]["role"], r["cells"][b]["role"] = "shift A", "shift B"
    for cell, controller_epochs in ((a, math.inf), (b, 2.0)):
        times = {"adam": 1.0, "adamw_cosine": 3.0, "adam+controller": controller_epochs}
        for m, t in times.items():
            r["cells"][cell]["rulesets"]["self_tuning"][m]["summary"]["epochs_to_target"] = t
    line = next(s for s in verdict(r) if s.startswith("Shift") and "controller" in s)
    assert "never reaches the target on task A" in line and "ranks 2 of 3 on the shifted task B" in line


def test_exposure_of_weights_run_instead_of_the_shipped_ones(tmp_path):
    """A benchmark run with self-trained weights describes what those saw in meta-training
    (the config saved in the weights file), not the shipped card."""
    import dataclasses

    from metalearner.bench.summary import meta_training_exposure
    from metalearner.lopt.meta_train import default_config
    from metalearner.lopt.policy import PolicyWeights

    cfg = default_config("opt2vec", datasets=("digits",), widths=(24,))
    path = tmp_path / "opt2vec.safetensors"
    PolicyWeights.init(cfg.policy()).save(path, metadata={"meta_train_config": json.dumps(dataclasses.asdict(cfg))})
    shipped = meta_training_exposure()
    mine = meta_training_exposure({"opt2vec": str(path)})
    assert mine["opt2vec"]["datasets"] == ["digits"] and mine["opt2vec"]["widths"] == [24]
    assert mine["controller"] == shipped["controller"]


def test_a_rerun_of_some_methods_replaces_their_runs_and_keeps_the_others(finished, tmp_path):
    """``merge_rerun``: the rerun method's runs and tuning come from the part (here the
    controller with untrained weights), every other method's from the earlier results, read
    back from a file as a results file keeps them (6 digits); the summaries and profiles are
    recomputed from the merged runs, the step-time ratios stay those of each run's own session,
    and ``reruns`` says what came from when. Refused: a part whose reference runs differ, the
    reference method itself, another protocol, a kept method whose defaults changed."""
    import copy

    from metalearner.bench.metrics import profile_score
    from metalearner.bench.summary import check_rerun, merge_rerun
    from metalearner.lopt.policy import default_weights

    _, results, _ = finished

    def six(obj):  # what benchmarks/time_to_target.py writes
        if isinstance(obj, float):
            return float(f"{obj:.6g}")
        if isinstance(obj, dict):
            return {k: six(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [six(v) for v in obj]
        return obj

    (tmp_path / "previous.json").write_text(json.dumps({"results": six(results)}).replace("Infinity", "null"))
    previous = load_results(tmp_path / "previous.json")
    w = default_weights("controller")
    path = tmp_path / "controller.safetensors"
    w.with_flat(w.flat() * 0).save(path)  # untrained: Adam's runs, other epochs to target
    part = run_suite(select(TINY, methods="adam,adam+controller"), tmp_path / "part", InlineExecutor(), progress=False,
                     weights={"adam+controller": str(path)})  # fmt: skip
    merged = merge_rerun(previous, part, TINY, ("adam+controller",), {"previous_command": "x"})
    for c, cell in merged["cells"].items():
        for r in ("self_tuning", "tuned"):
            seeds = lambda res, m: [(s["epochs_to_target"], s["curve"]) for s in res["cells"][c]["rulesets"][r][m]["seeds"]]  # noqa: E731
            assert seeds(merged, "adam+controller") == seeds(part, "adam+controller")
            assert seeds(merged, "adamw_cosine") == seeds(previous, "adamw_cosine")
            for m, source in (("adam+controller", part), ("adam", previous), ("adamw_cosine", previous)):
                assert cell["rulesets"][r][m]["summary"]["step_time_vs_adam"] == source["cells"][c]["rulesets"][r][m]["summary"]["step_time_vs_adam"]
        assert cell["tuning"]["adam+controller"] == part["cells"][c]["tuning"]["adam+controller"]
    for r in ("self_tuning", "tuned"):
        times = {m: {c: cell["rulesets"][r][m]["summary"]["epochs_to_target"] for c, cell in merged["cells"].items()} for m in TINY.methods}
        assert merged["profile_scores"][r] == profile_score(times)
    assert merged["profile_scores"] != results["profile_scores"]  # the controller's new runs count
    assert merged["reruns"] == [{"methods": ["adam+controller"], "date": merged["date"], "others_from": results["date"], "previous_command": "x"}]
    again = merge_rerun(merged, part, TINY, ("adam+controller",))
    assert again["reruns"][-1]["others_from"] == results["date"] and len(again["reruns"]) == 2  # the kept runs' date carries over
    bad = copy.deepcopy(part)
    bad["cells"]["moons/mlp-1x16-relu"]["rulesets"]["tuned"]["adam"]["seeds"][1]["curve"][0][1] += 0.01
    with pytest.raises(MetalearnerError, match="moons/mlp-1x16-relu: the rerun's adam runs differ"):
        merge_rerun(previous, bad, TINY, ("adam+controller",))
    with pytest.raises(MetalearnerError, match="other than the reference"):
        check_rerun(previous, TINY, ("adam",))
    with pytest.raises(MetalearnerError, match="other than the reference"):
        check_rerun(previous, TINY, ("adam+controller", ""))  # a trailing comma
    with pytest.raises(MetalearnerError, match="another tiny protocol"):
        check_rerun(previous, dataclasses.replace(TINY, seeds=3), ("adam+controller",))
    changed = copy.deepcopy(previous)
    changed["methods"]["adamw_cosine"]["default_lr"] *= 2
    with pytest.raises(MetalearnerError, match="defaults or tuning grid of adamw_cosine changed"):
        check_rerun(changed, TINY, ("adam+controller",))
