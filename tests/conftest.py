"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data sets next to the repository; missing fails under CI, skips locally."""
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} is missing"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture
def pretrained_copy(tmp_path: Path) -> Path:
    """A copy of the shipped learned_sf weights and model card, for tests that ship into it."""
    import shutil

    from metalearner.lopt.policy import PRETRAINED

    folder = tmp_path / "pretrained"
    folder.mkdir()
    for name in ("learned.safetensors", "MODEL_CARD.json", "MODEL_CARD.md"):
        shutil.copyfile(PRETRAINED / name, folder / name)
    return folder


ONE_THREAD = ("meta", "mirror")  # test folders of small-tensor work: one intra-op thread


@pytest.fixture(autouse=True)
def one_thread_for_small_tensors(request: pytest.FixtureRequest):
    """On a shared machine, oversubscribed threads make small-tensor tests many times slower."""
    import torch

    if Path(str(request.node.fspath)).parent.name not in ONE_THREAD:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
