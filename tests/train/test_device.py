"""--device: recorded in the run config only when it is not the CPU (earlier run ids stay);
a GPU run where one exists."""

from __future__ import annotations

import pytest
import torch

from metalearner.errors import ConfigError
from metalearner.tasks import ModelConfig, TaskConfig
from metalearner.train.run import RunConfig, resolve_device, train_run

TASK = TaskConfig(dataset="moons", model=ModelConfig(depth=1, width=8), batch_size=32)


def test_cpu_is_the_default_and_keeps_run_ids():
    assert "device" not in RunConfig(task=TASK).to_dict()
    assert RunConfig(task=TASK, device="cuda").to_dict()["device"] == "cuda"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        RunConfig(task=TASK, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_one_line():
    with pytest.raises(ConfigError, match="no GPU"):
        train_run(RunConfig(task=TASK, device="cuda", epochs=1), probe=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_run_on_the_gpu(tmp_path):
    res = train_run(RunConfig(task=TASK, device="cuda", epochs=1), tmp_path / "run")
    assert res.status == "complete" and res.final["val_acc"] > 0
