import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearner.errors import ConfigError
from metalearner.observe import Probe, TensorBoardSink


def test_tensorboard_sink(tmp_path):
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="pip install"):
            TensorBoardSink(tmp_path)
        return
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Probe(model, opt, sinks=[TensorBoardSink(tmp_path)], chunk_size=2) as probe:
        for _ in range(3):
            x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            probe.observe(loss, logits=logits, targets=y)
            opt.step()
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
