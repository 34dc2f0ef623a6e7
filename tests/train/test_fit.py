"""The training loop: determinism, budgets, evaluation, divergence, schedules."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from metalearner.errors import ConfigError
from metalearner.observe import Probe, read_run, read_trajectory
from metalearner.tasks import ModelConfig, TaskConfig, make_task
from metalearner.methods import METHODS, get_method, make_schedule
from metalearner.train import RunConfig, fit, train_run

MOONS = TaskConfig(dataset="moons", model=ModelConfig(depth=2, width=16), batch_size=50, n_train=400)


@pytest.fixture(scope="module")
def moons():
    return make_task(MOONS)


def test_same_seed_same_trajectory(tmp_path):
    cfg = RunConfig(task=MOONS, optimizer="momentum", lr=0.05, epochs=2, seed=3)
    train_run(cfg, tmp_path / "a")
    train_run(cfg, tmp_path / "b")
    train_run(RunConfig(task=MOONS, optimizer="momentum", lr=0.05, epochs=2, seed=4), tmp_path / "c")
    a, b, c = (read_trajectory(tmp_path / k, format="pandas") for k in "abc")
    for col in ("loss", "grad_norm", "update_norm", "train_acc"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col
    assert not np.array_equal(a["loss"].to_numpy(), c["loss"].to_numpy())
    assert read_run(tmp_path / "a")["final"] == read_run(tmp_path / "b")["final"]


def test_budgets_and_eval_schedule(moons):
    model = moons.build_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    r = fit(model, opt, moons, epochs=2, eval_every=3, seed=0)
    per_epoch = math.ceil(moons.data.n_train / 50)
    assert r.steps == 2 * per_epoch and r.epochs == 2 and r.status == "complete"
    eval_steps = [h["step"] for h in r.history]
    assert eval_steps == sorted(set(list(range(3, 2 * per_epoch + 1, 3)) + [per_epoch, 2 * per_epoch]))
    assert {"val_acc", "test_acc", "test_loss"} <= set(r.final)
    r = fit(model, opt, moons, steps=5, seed=0)
    assert r.steps == 5 and r.history[-1]["step"] == 5
    r = fit(model, opt, moons, epochs=0.5, seed=0)
    assert r.steps == math.ceil(0.5 * per_epoch)
    with pytest.raises(ConfigError, match="budget"):
        fit(model, opt, moons)


def test_stop_at_target(moons):
    model = moons.build_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    r = fit(model, opt, moons, epochs=50, eval_every=2, target_acc=0.8, seed=0)
    assert r.status == "target_reached" and r.final["val_acc"] >= 0.8
    assert r.steps < 50 * 8


class NaNAfter(nn.Module):
    """Wraps a model and returns NaN logits from the ``k``-th forward call in training."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k, self.calls = model, k, 0

    def forward(self, x):
        out = self.model(x)
        if self.training:
            self.calls += 1
            if self.calls > self.k:
                out = out * float("nan")
        return out


def test_nan_run_ends_as_diverged_and_keeps_its_trajectory(moons, tmp_path):
    model = NaNAfter(moons.build_model(seed=0), k=7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, out_dir=tmp_path)
    r = fit(model, opt, moons, epochs=5, probe=probe, seed=0)
    probe.close("diverged" if r.diverged else "complete", final=r.final)
    assert r.status == "diverged" and r.final["diverged_at_step"] == 7
    assert "test_acc" not in r.final
    df = read_trajectory(tmp_path, format="pandas")
    assert len(df) == 8 and np.isfinite(df["loss"][:7]).all() and math.isnan(df["loss"][7])
    meta = read_run(tmp_path)
    assert meta["status"] == "diverged" and meta["final"]["diverged_at_step"] == 7


def test_divergence_from_a_huge_learning_rate(tmp_path):
    cfg = RunConfig(task=MOONS, optimizer="sgd", lr=1e12, epochs=3)
    r = train_run(cfg, tmp_path)
    assert r.status == "diverged"
    assert read_run(tmp_path)["status"] == "diverged"


def test_cosine_schedule_is_recorded_by_the_probe(tmp_path):
    cfg = RunConfig(task=MOONS, optimizer="adam", lr=0.01, schedule="cosine", epochs=2)
    train_run(cfg, tmp_path)
    lr = read_trajectory(tmp_path, format="pandas")["lr"].to_numpy()
    assert lr[0] == pytest.approx(0.01) and lr[-1] < 1e-4
    assert np.all(np.diff(lr) <= 1e-12)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine", "onecycle"])
def test_every_schedule_builds(schedule, moons):
    model = moons.build_model(seed=0)
    opt, _ = get_method("sgd").build(model.parameters(), lr=0.1)
    sched = make_schedule(schedule, opt, 10)
    assert (sched is None) == (schedule == "constant")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_one_epoch_through_train_run(name, tmp_path):
    cfg = RunConfig(task=MOONS, optimizer=name, epochs=1)
    r = train_run(cfg, tmp_path)
    assert r.status == "complete" and r.final["val_acc"] > 0.4
    assert read_run(tmp_path)["config"]["optimizer"] == name


def test_bad_optimizer_settings_fail_before_any_work():
    with pytest.raises(ConfigError, match="unknown method 'adamax'"):
        RunConfig(optimizer="adamax")
    with pytest.raises(ConfigError, match="unknown schedule"):
        RunConfig(schedule="step")
    with pytest.raises(ConfigError, match="learning rate"):
        get_method("sgd").build([nn.Parameter(torch.zeros(1))], lr=-1.0)


def test_fit_reads_the_device_only_every_few_steps(moons, monkeypatch):
    """No host synchronisation per step: over 200 steps without a progress bar or probe,
    device values are read at the periodic loss checks and the evaluations only."""
    from metalearner.train.fit import CHECK_EVERY

    reads = []
    for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            reads.append(1)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    model = moons.build_model(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)  # stateless: its steps read nothing either
    r = fit(model, opt, moons, steps=200, seed=0, test=False)
    evals = len(r.history)
    assert r.steps == 200
    assert len(reads) <= 200 // CHECK_EVERY + 8 * evals, (len(reads), evals)


def test_divergence_is_reported_at_its_exact_step_between_checks(moons):
    """A loss that turns NaN between two periodic checks is still reported at its own step."""

    class Poison(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            self.t = getattr(self, "t", 0) + 1
            if self.t == 11:
                with torch.no_grad():
                    for p in self.param_groups[0]["params"]:
                        p.fill_(float("nan"))

    model = moons.build_model(seed=0)
    r = fit(model, Poison(model.parameters(), lr=0.01), moons, steps=100, seed=0)
    assert r.status == "diverged" and r.final["diverged_at_step"] == 11 and r.steps <= 25


def test_an_out_dir_holding_an_interrupted_run_is_named_so(tmp_path):
    from metalearner.train.run import prepare_out_dir

    (tmp_path / "run.json").write_text('{"status": "partial"}')
    with pytest.raises(ConfigError, match="already holds a partial \\(interrupted\\) run; pass --overwrite"):
        prepare_out_dir(tmp_path)
    (tmp_path / "run.json").write_text('{"status": "complete"}')
    with pytest.raises(ConfigError, match="already holds a run; pass --overwrite"):
        prepare_out_dir(tmp_path)
    prepare_out_dir(tmp_path, overwrite=True)
    assert not (tmp_path / "run.json").exists()


class _Stop(Exception):
    pass


class _KillAt:
    """A progress bar that stops the run (as Ctrl-C would) once it is told of step ``at``."""

    def __init__(self, at: int):
        self.at = at

    def update(self, step, total, **info):
        if step >= self.at:
            raise _Stop


@pytest.mark.parametrize("kind", ["adam_with_scheduler", "tower", "learned_sf"])
def test_an_interrupted_fit_continues_from_its_checkpoint_as_if_never_stopped(moons, tmp_path, kind):
    from metalearner.lopt.learned import LearnedOptimizer
    from metalearner.meta.towers import Tower

    def run(**kw):
        model = moons.build_model(seed=1)
        scheduler, keep = None, {"lrs": []}
        if kind == "tower":
            opt = Tower(model.parameters(), lr=1e-2, base="sgd", height=2, hyper_every=2, warmup=4)
        elif kind == "learned_sf":
            opt = LearnedOptimizer(model.parameters())
        else:
            opt = torch.optim.Adam(model.parameters(), 1e-2)
            scheduler = torch.optim.lr_scheduler.StepLR(opt, 5, gamma=0.8)
        opt.register_step_post_hook(lambda o, *_: keep["lrs"].append(float(o.param_groups[0].get("effective_lr", o.param_groups[0]["lr"]))))
        result = fit(model, opt, moons, epochs=3, eval_every=3, seed=2, scheduler=scheduler, keep=keep, **kw)
        return model, result, keep

    whole, expected, logs = run()
    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(_Stop):  # killed in the second epoch: the first epoch's end is kept
        run(checkpoint=ckpt, progress=_KillAt(12))
    model, result, kept = run(checkpoint=ckpt)
    assert result.history == expected.history and result.final == expected.final and kept == logs
    for p, q in zip(model.parameters(), whole.parameters()):
        assert torch.equal(p, q)
    again, result, _ = run(checkpoint=ckpt)  # a finished run: read back, nothing left to train
    assert result.history == expected.history and all(torch.equal(p, q) for p, q in zip(again.parameters(), whole.parameters()))


def test_a_fit_checkpoint_of_other_options_or_kept_without_the_probe_is_refused(moons, tmp_path):
    ckpt = tmp_path / "run.safetensors"
    model = moons.build_model(seed=0)
    fit(model, torch.optim.Adam(model.parameters(), 1e-2), moons, epochs=1, seed=0, checkpoint=ckpt)
    with pytest.raises(ConfigError, match="holds a run with other options"):
        fit(model, torch.optim.Adam(model.parameters(), 1e-2), moons, epochs=2, seed=0, checkpoint=ckpt)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    with pytest.raises(ConfigError, match="give the probe out_dir"):
        fit(model, opt, moons, epochs=1, probe=Probe(model, opt), checkpoint=ckpt)
    with pytest.raises(ConfigError, match="kept without a probe, whose log cannot continue"):
        fit(model, opt, moons, epochs=1, probe=Probe(model, opt, out_dir=tmp_path / "run", resume=True), checkpoint=ckpt)


def _same_log(a, b):
    """Two trajectories alike in every column but the wall time (and the run id, if told)."""
    a, b = (read_trajectory(d, format="pandas").drop(columns=["wall_time"]) for d in (a, b))
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        if col != "run_id":
            assert a[col].equals(b[col]), col


@pytest.mark.parametrize("extended", [False, True])
def test_an_interrupted_probe_log_continues_from_the_checkpoint_as_if_never_stopped(moons, tmp_path, extended):
    """Killed without closing its probe (the parts written after the checkpoint left on disk),
    the run continues: the log is the uninterrupted one's, part for part."""

    def run(out, resume=False, **kw):
        model = moons.build_model(seed=1)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        probe = Probe(model, opt, out_dir=out, chunk_size=5, extended=extended, resume=resume)
        result = fit(model, opt, moons, epochs=4, eval_every=3, seed=2, probe=probe, **kw)
        probe.close(final=result.final)
        return model, probe

    whole, probe = run(tmp_path / "whole")
    ckpt, out = tmp_path / "run.safetensors", tmp_path / "run"
    with pytest.raises(_Stop):  # at step 24, in the third epoch: the second's end is kept, and a part after it written
        run(out, checkpoint=ckpt, progress=_KillAt(23))
    parts = sorted(p.name for p in (out / "trajectory.parts").iterdir())
    assert len(parts) == 5 and read_run(out)["status"] == "partial"
    model, again = run(out, resume=True, checkpoint=ckpt)
    _same_log(out, tmp_path / "whole")
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), whole.parameters()))
    assert read_run(out)["final"] == read_run(tmp_path / "whole")["final"] and read_run(out)["status"] == "complete"
    assert set(read_trajectory(out, format="pandas")["run_id"]) == {again.run_id}


def test_train_run_continues_an_interrupted_run_of_its_config_and_starts_others_over(tmp_path):
    cfg = RunConfig(task=MOONS, optimizer="learned_sf", epochs=3, eval_every=3, seed=2, extended=True)
    train_run(cfg, tmp_path / "whole")
    out = tmp_path / "run"
    with pytest.raises(_Stop):  # Ctrl-C: the probe closes the run as partial, its log merged
        train_run(cfg, out, progress=_KillAt(12), resume=True)
    assert read_run(out)["status"] == "partial" and (out / "checkpoint.safetensors").is_file()
    first = read_run(out)["run_id"]
    from metalearner.train.run import continuable

    assert continuable(out, cfg) == out / "checkpoint.safetensors"
    assert continuable(out, RunConfig(task=MOONS, optimizer="learned_sf", epochs=3, eval_every=3, seed=3, extended=True)) is None
    result = train_run(cfg, out, resume=True)
    _same_log(out, tmp_path / "whole")
    assert read_run(out)["run_id"] == first and read_run(out)["final"] == read_run(tmp_path / "whole")["final"]
    assert {k: v for k, v in result.final.items() if k != "n_params"} == read_run(out)["final"] and not (out / "checkpoint.safetensors").exists()
    with pytest.raises(ConfigError, match="already holds a run; pass --overwrite"):  # finished: not run again
        train_run(cfg, out, resume=True)
    # interrupted before its first epoch's end: nothing kept, so the same config starts over
    with pytest.raises(_Stop):
        train_run(cfg, tmp_path / "early", progress=_KillAt(3), resume=True)
    assert not (tmp_path / "early" / "checkpoint.safetensors").exists()
    train_run(cfg, tmp_path / "early", resume=True)
    _same_log(tmp_path / "early", tmp_path / "whole")
    # another config's interrupted run is refused, as without resume
    with pytest.raises(_Stop):
        train_run(cfg, tmp_path / "other", progress=_KillAt(12), resume=True)
    with pytest.raises(ConfigError, match="already holds a partial \\(interrupted\\) run; pass --overwrite"):
        train_run(RunConfig(task=MOONS, optimizer="adam", epochs=3), tmp_path / "other", resume=True)


def test_a_log_shorter_than_its_checkpoint_is_a_one_line_error(moons, tmp_path):
    from metalearner.errors import DataError

    cfg = RunConfig(task=MOONS, optimizer="adam", epochs=3, eval_every=3)
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        train_run(cfg, out, progress=_KillAt(12), resume=True)
    (out / "trajectory.parquet").unlink()
    with pytest.raises(DataError, match="ends before its checkpoint \\(0 of 8 steps\\); start the run over"):
        train_run(cfg, out, resume=True)


def test_a_failed_continuation_leaves_the_interrupted_run_as_it_was(tmp_path):
    """A checkpoint that cannot be read (or a Ctrl-C before the log is taken over) is an error,
    and the interrupted run's log stays, to be continued once the cause is mended."""
    from metalearner.errors import DataError

    cfg = RunConfig(task=MOONS, optimizer="adam", epochs=3, eval_every=3)
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        train_run(cfg, out, progress=_KillAt(12), resume=True)
    rows, run = len(read_trajectory(out)), read_run(out)
    good = (out / "checkpoint.safetensors").read_bytes()
    (out / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="is not a readable checkpoint"):
        train_run(cfg, out, resume=True)
    assert len(read_trajectory(out)) == rows and read_run(out) == run
    (out / "checkpoint.safetensors").write_bytes(good)
    train_run(cfg, out, resume=True)
    train_run(cfg, tmp_path / "whole")
    _same_log(out, tmp_path / "whole")


def test_a_probe_made_to_resume_needs_a_checkpoint(moons, tmp_path):
    model = moons.build_model(seed=0)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    probe = Probe(model, opt, out_dir=tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match="no checkpoint file to continue it from"):
        fit(model, opt, moons, epochs=1, probe=probe, checkpoint=tmp_path / "none.safetensors")
    probe.close()
    assert not (tmp_path / "run" / "trajectory.parquet").exists()


def test_train_run_holds_its_folder_and_tidies_what_a_kill_left(tmp_path):
    from metalearner.parallel import DirectoryLock, DirectoryLocked

    cfg = RunConfig(task=MOONS, optimizer="adam", epochs=2)
    out = tmp_path / "run"
    with DirectoryLock(out):  # another process continuing or writing this run
        with pytest.raises(DirectoryLocked, match="in use by another process"):
            train_run(cfg, out, resume=True)
    (out / ".checkpoint.safetensors.x1y2.tmp").write_bytes(b"half a save")
    train_run(cfg, out, resume=True)
    assert not list(out.glob(".checkpoint.safetensors.*")) and not (out / "checkpoint.safetensors").exists()
    (out / "checkpoint.safetensors").write_bytes(b"left by a kill after the run ended")
    with pytest.raises(ConfigError, match="already holds a run"):
        train_run(cfg, out, resume=True)
    assert not (out / "checkpoint.safetensors").exists()
