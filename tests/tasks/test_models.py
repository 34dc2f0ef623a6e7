"""Model families, architecture encodings and task families."""

import numpy as np
import pytest
import torch

from metalearner.errors import ConfigError
from metalearner.tasks import ACTIVATIONS, ModelConfig, TaskConfig, TaskFamily, build_model, encode_architecture, make_task
from metalearner.tasks.models import ENCODING_FIELDS, INITS


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("init", INITS)
def test_mlp_builds_and_runs(activation, init):
    model = build_model(ModelConfig(depth=3, width=16, activation=activation, init=init), (1, 28, 28), 10, seed=0)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4


@pytest.mark.parametrize("shape", [(1, 28, 28), (40,), (3, 16)])
def test_cnn_handles_images_and_sequences(shape):
    model = build_model(ModelConfig(family="cnn", depth=2, width=4), shape, 7, seed=0)
    assert model(torch.randn(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("shape", [(1, 28, 28), (40,), (3, 16)])
def test_rnn_reads_images_by_rows_and_sequences_by_steps(shape):
    model = build_model(ModelConfig(family="rnn", depth=2, width=8, activation="tanh"), shape, 7, seed=0)
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 7)
    steps = shape[0] if len(shape) == 1 else shape[1]
    seen = []
    model.gru.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    model(x)
    assert seen[0][1] == steps  # rows of an image, positions of a sequence


@pytest.mark.parametrize("shape, tokens", [((1, 28, 28), (28, 28)), ((40,), (8, 5)), ((37,), (8, 5)), ((3, 16), (16, 3))])
def test_transformer_reads_image_rows_sequence_columns_or_slices_of_a_flat_input(shape, tokens):
    model = build_model(ModelConfig(family="transformer", depth=2, width=32, activation="gelu"), shape, 7, seed=0)
    x = torch.randn(2, *shape)
    assert model(x).shape == (2, 7)
    assert model.sequence(x).shape == (2, *tokens)
    if len(shape) == 1:  # slices in order, the last zero-padded
        assert torch.equal(model.sequence(x).flatten(1)[:, : shape[0]], x)
        assert not model.sequence(x).flatten(1)[:, shape[0] :].any()
    names = [n for n, _ in model.named_parameters()]
    assert names[0] == "embed.weight" and names[-1] == "head.bias"  # the input layer first, as learned optimizers read it
    assert model.blocks[0].heads == 2  # heads of 16 dimensions


def test_transformer_attention_is_softmax_attention():
    """The written-out attention equals torch's own (``F.scaled_dot_product_attention``)."""
    from metalearner.tasks.models import attention_weights

    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    torch.testing.assert_close(attention_weights(q, k) @ v, torch.nn.functional.scaled_dot_product_attention(q, k, v))


def test_seed_fixes_weights_and_leaves_global_rng_alone():
    cfg = ModelConfig(depth=2, width=8)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = build_model(cfg, (4,), 2, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_model(cfg, (4,), 2, seed=1)
    c = build_model(cfg, (4,), 2, seed=2)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"activation": "swish"}, "unknown activation"),
        ({"family": "vit"}, "unknown model family"),
        ({"family": "transformer", "depth": 0}, "depth"),
        ({"init": "he"}, "unknown init"),
        ({"width": 0}, "width"),
        ({"family": "cnn", "depth": 0}, "depth"),
    ],
)
def test_bad_model_config_is_a_clear_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_encoding_has_fixed_length_and_readable_fields():
    small = encode_architecture(ModelConfig(depth=1, width=32, activation="tanh"), 1000)
    big = encode_architecture(ModelConfig(family="cnn", depth=4, width=64, activation="gelu", init="xavier"), 10**6)
    assert len(small["vector"]) == len(big["vector"]) == len(ENCODING_FIELDS)
    assert small["activation"] == "tanh" and big["family"] == "cnn"
    named = dict(zip(ENCODING_FIELDS, big["vector"]))
    assert named["depth"] == 4 and named["log2_width"] == 6 and named["activation=gelu"] == 1
    assert named["log10_params"] == pytest.approx(6)


def test_task_family_sampling_is_reproducible_and_builds_tasks():
    family = TaskFamily(datasets=("moons", "digits", "mnist1d"), n_train=200)
    first = [family.sample(np.random.default_rng(7)) for _ in range(2)]
    assert first[0] == first[1]
    rng = np.random.default_rng(0)
    configs = [family.sample(rng) for _ in range(12)]
    assert len({c.model for c in configs}) > 3
    cfg = configs[0]
    assert TaskConfig.from_dict(cfg.to_dict()) == cfg
    task = make_task(cfg)
    model = task.build_model(seed=0)
    assert model(task.data.x_train[:3]).shape == (3, task.data.n_classes)
    assert task.architecture(model)["n_params"] == sum(p.numel() for p in model.parameters())


def test_task_family_takes_the_zoos_value_specs():
    """TaskFamily and zoo sweep specs draw with the same primitive: tuples, plain values and
    distributions; fixed data seeds and per-data-set options."""
    from metalearner.errors import ConfigError

    family = TaskFamily(datasets=("mnist1d", "digits"), depths={"int_uniform": [1, 3]}, widths={"int_log_uniform": [16, 256]},
                        activations="relu", data_seeds=(0, 1), n_train=300, data_options={"mnist1d": {"num_samples": 2000}})  # fmt: skip
    configs = [family.sample(np.random.default_rng(s)) for s in range(30)]
    assert {c.model.depth for c in configs} == {1, 2, 3} and all(16 <= c.model.width <= 256 for c in configs)
    assert {c.seed for c in configs} == {0, 1} and {c.model.activation for c in configs} == {"relu"}
    assert all(c.data_options == ({"num_samples": 2000} if c.dataset == "mnist1d" else {}) for c in configs)
    with pytest.raises(ConfigError, match="widths"):
        TaskFamily(widths={"log_uniform": [0, 3]})
