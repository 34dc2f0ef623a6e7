"""Meta-training improves its meta-objective on a tiny task family, and resumes exactly."""

from __future__ import annotations

import pytest
import torch

from metalearner.lopt.meta_train import MetaTrainConfig, meta_loss, meta_train
from metalearner.lopt.policy import PolicyWeights
from metalearner.parallel import InlineExecutor

# base lr far too small: the obvious improvement is a larger learned lr scale
TINY = dict(
    kind="opt2vec", seed=0, outer_steps=4, pairs=3, sigma=0.1, outer_lr=0.15, unroll_steps=32,
    datasets=("digits", "synthetic"), depths=(1,), widths=(16,), activations=("tanh",), batch_sizes=(32,),
    n_train=256, data_seeds=(0,), base_lrs=(1e-4,), input_scales=(1.0,), eval_tasks=2,
    history_length=4, hidden_dim=8, embedding_dim=8, observe_every=4,
)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("meta")
    weights, state = meta_train(MetaTrainConfig(**TINY), out, executor=InlineExecutor(), progress=False)
    return out, weights, state


def test_meta_training_improves_the_objective(trained):
    out, weights, state = trained
    ev = state.evaluation
    assert ev["final_mean"] < ev["initial_mean"] - 0.05, ev
    assert len(state.curve) == 4 and (out / "opt2vec.safetensors").is_file()
    assert torch.equal(PolicyWeights.load(out / "opt2vec.safetensors").flat(), state.theta.detach())


def test_resume_continues_exactly(trained, tmp_path):
    _, _, full = trained
    meta_train(MetaTrainConfig(**{**TINY, "outer_steps": 2}), tmp_path, executor=InlineExecutor(), progress=False)
    _, resumed = meta_train(MetaTrainConfig(**TINY), tmp_path, executor=InlineExecutor(), progress=False)
    assert resumed.step == 4
    assert torch.equal(resumed.theta, full.theta)  # bit for bit: θ and the outer Adam's state were checkpointed whole
    assert isinstance(resumed.outer, torch.optim.Adam) and resumed.outer.param_groups[0]["lr"] == TINY["outer_lr"]
    mine, theirs = resumed.outer.state_dict()["state"][0], full.outer.state_dict()["state"][0]
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(Exception, match="different config"):
        meta_train(MetaTrainConfig(**{**TINY, "sigma": 0.2}), tmp_path, executor=InlineExecutor(), progress=False)


def test_a_checkpoint_of_the_old_hand_written_outer_adam_is_refused_in_one_line(trained, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from metalearner.errors import ConfigError, DataError

    out, _, full = trained
    shutil.copy(out / "state.json", tmp_path / "state.json")
    theta = full.theta.detach()  # the old layout: θ and the moments as tensors, the record in state.json only
    save_file({"theta": theta, "m": torch.zeros_like(theta), "v": torch.zeros_like(theta)}, str(tmp_path / "checkpoint.safetensors"))
    with pytest.raises(ConfigError, match="older version"):
        meta_train(MetaTrainConfig(**TINY), tmp_path, executor=InlineExecutor(), progress=False)
    save_file({"weights": theta}, str(tmp_path / "checkpoint.safetensors"))  # some other safetensors file
    with pytest.raises(DataError, match="is not a meta-train checkpoint"):
        meta_train(MetaTrainConfig(**TINY), tmp_path, executor=InlineExecutor(), progress=False)


def test_meta_loss_penalises_divergence():
    good = meta_loss([2.0, 1.0, 0.5], 0.5, 3)
    diverged = meta_loss([2.0, float("nan")], float("nan"), 3)
    assert good < 0 < diverged


def test_meta_training_draws_its_tasks_from_a_task_family():
    import numpy as np

    from metalearner.lopt.meta_train import default_config, sample_task, task_family

    cfg = default_config("opt2vec")
    spec = sample_task(cfg, np.random.default_rng(3))
    task = task_family(cfg).sample(np.random.default_rng(3))
    assert (spec["dataset"], spec["data_seed"], spec["depth"], spec["width"], spec["activation"], spec["batch_size"]) == (
        task.dataset, task.seed, task.model.depth, task.model.width, task.model.activation, task.batch_size)
    assert spec["n_train"] == task.n_train == cfg.n_train
