"""The one schema: the probe's columns, the mirror's features and the learned optimizers'
inputs come from the same named fields and the same transform."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from metalearner.observe import COLUMNS, EXTENDED_COLUMNS, FIELDS, Probe, log_feature
from metalearner.observe.schema import EPS, PHYSICS, describe, feature, signed_log


def test_the_probe_writes_exactly_the_schema_with_its_types():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = Probe(model, opt, extended=True, task="t")
    for _ in range(3):
        loss = model(torch.randn(5, 3)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        probe.observe(loss)
        opt.step()
    table = probe.table()
    assert tuple(table.column_names) == COLUMNS + EXTENDED_COLUMNS
    for f in table.schema:
        expected = FIELDS[f.name].type
        assert (f.type.value_type if pa.types.is_fixed_size_list(f.type) else f.type) == expected, f.name
    probe.close()


@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)), min_size=1, max_size=20))
def test_log_feature_is_one_transform_for_arrays_and_scalars(xs):
    arr = log_feature(np.array(xs))
    for x, y in zip(xs, arr):
        one = float(log_feature(x))
        assert (math.isnan(y) and math.isnan(one)) or y == one
        if x != x or x < 0:
            assert math.isnan(y)
        elif x == 0:
            assert y == math.log(EPS)
        elif x == math.inf:
            assert y == math.inf
        else:
            assert y == pytest.approx(math.log(max(x, EPS)))


def test_each_field_names_its_transform():
    assert feature("grad_norm", 1.0) == 0.0 and feature("grad_cos", -0.5) == -0.5
    assert feature("curvature", -(math.e - 1)) == pytest.approx(-1.0) and float(signed_log(0.0)) == 0.0
    assert set(PHYSICS) <= set(FIELDS) and "| `update_ratio` |" in describe()


def test_learned_optimizers_and_the_mirror_read_the_same_transform():
    """A learned optimizer's log features and the mirror's are the schema's transform of the
    same column, value for value."""
    import pandas as pd

    from metalearner.lopt.policy import raw_features
    from metalearner.mirror.dataset import step_features

    physics = {"grad_norm": 0.37, "weight_norm": 12.5, "update_norm": 0.02, "update_ratio": 0.02 / 12.5,
               "grad_cos": 0.1, "curvature": -3.0}  # fmt: skip
    names = ("log_loss", "log_grad_norm", "log_weight_norm", "log_update_ratio", "curvature")
    lopt = raw_features(names, loss=0.8, first_loss=2.3, prev_loss=0.9, lr_scale=1.0, physics=physics, budget_fraction=0.0)
    traj = pd.DataFrame({"step": [0], "loss": [0.8], "grad_norm": [0.37], "weight_norm": [12.5], "update_ratio": [0.02 / 12.5],
                         "lr": [1e-3], "momentum": [0.9], "train_acc": [0.5], "val_loss": [np.nan], "val_acc": [np.nan]})  # fmt: skip
    mirror = step_features(traj, total=10).iloc[0]
    assert lopt[0] == pytest.approx(mirror["log_loss"]) and lopt[1] == mirror["log_grad_norm"]
    assert lopt[2] == mirror["log_weight_norm"] and lopt[3] == mirror["log_update_ratio"]
    assert lopt[4] == float(signed_log(-3.0))
