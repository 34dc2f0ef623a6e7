"""One intra-op thread for these small-tensor tests: on a shared machine, oversubscribed
threads make them many times slower, not faster."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
