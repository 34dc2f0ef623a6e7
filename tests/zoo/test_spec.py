"""Sweep specs: parsing, validation, sampling determinism, presets."""

import pytest

from metalearner.errors import ConfigError
from metalearner.zoo.spec import SweepSpec, load_spec, parse_assignment, run_id, sample_runs


def test_mnist100_preset_is_the_missions_zoo():
    runs = sample_runs(load_spec("mnist100"))
    assert len(runs) == 100
    assert {r.task.dataset for r in runs} == {"mnist"} and {r.epochs for r in runs} == {10}
    assert {r.task.model.depth for r in runs} == set(range(1, 7))
    widths = {r.task.model.width for r in runs}
    assert min(widths) == 32 and max(widths) == 1024
    assert {r.optimizer for r in runs} == {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"}
    assert len({r.task.model.activation for r in runs}) >= 5
    lrs = [r.lr for r in runs]
    assert min(lrs) < 1e-4 and max(lrs) > 0.5  # crawling to diverging
    assert len({run_id(r) for r in runs}) == 100


def test_random_sampling_is_deterministic_and_seeded(tmp_path):
    spec = load_spec("mnist100")
    a, b = sample_runs(spec), sample_runs(load_spec("mnist100"))
    assert [run_id(r) for r in a] == [run_id(r) for r in b]
    other = sample_runs(SweepSpec.from_dict({**spec.to_dict(), "seed": 1}))
    assert {run_id(r) for r in other} != {run_id(r) for r in a}


def test_grid_with_per_optimizer_overrides_and_log_grid():
    spec = SweepSpec.from_dict({
        "sampling": "grid",
        "space": {"dataset": "moons", "width": [8, 16], "optimizer": ["sgd", "adam"], "seed": [0, 1],
                  "lr": {"log_uniform": [1e-4, 1e-2], "num": 3},
                  "by_optimizer": {"sgd": {"lr": [0.5]}}},
    })  # fmt: skip
    runs = sample_runs(spec)
    assert len(runs) == 2 * 2 * 1 + 2 * 2 * 3
    assert {r.lr for r in runs if r.optimizer == "sgd"} == {0.5}
    assert sorted({r.lr for r in runs if r.optimizer == "adam"}) == [1e-4, 1e-3, 1e-2]
    assert [run_id(r) for r in runs] == [run_id(r) for r in sample_runs(spec)]


def test_run_id_is_by_content():
    (a,) = sample_runs(SweepSpec(space={"dataset": "moons", "lr": 0.1}))
    (b,) = sample_runs(SweepSpec(space={"lr": 0.1, "dataset": "moons"}))
    (c,) = sample_runs(SweepSpec(space={"dataset": "moons", "lr": 0.2}))
    assert run_id(a) == run_id(b) != run_id(c)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"space": {"dept": 2}}, "space.dept"),
        ({"colour": 1}, "colour"),
        ({"sampling": "sobol"}, "sampling"),
        ({"sampling": "random"}, "n_runs"),
        ({"space": {"lr": {"log_uniform": [1e-3, 1]}}}, "num"),
        ({"sampling": "random", "n_runs": 2, "space": {"lr": {"log_uniform": [0, 1]}}}, "space.lr"),
        ({"space": {"by_optimizer": {"sgdd": {"lr": 0.1}}}}, "sgdd"),
        ({"space": {"by_optimizer": {"sgd": {"widht": 3}}}}, "by_optimizer.sgd.widht"),
    ],
)
def test_bad_specs_name_the_bad_key(spec, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        SweepSpec.from_dict(spec)


def test_bad_values_fail_when_sampled():
    with pytest.raises(ConfigError, match="optimizer"):
        sample_runs(SweepSpec(space={"optimizer": ["sgd", "lion"]}))
    with pytest.raises(ConfigError, match="activation"):
        sample_runs(SweepSpec(space={"activation": "swish"}))


def test_toml_and_yaml_files(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text('sampling = "random"\nn_runs = 5\nseed = 3\n[space]\ndataset = "moons"\nlr = {log_uniform = [1e-3, 1.0]}\n')
    yaml = tmp_path / "s.yaml"
    yaml.write_text("sampling: random\nn_runs: 5\nseed: 3\nspace:\n  dataset: moons\n  lr: {log_uniform: [0.001, 1.0]}\n")
    pytest.importorskip("yaml")
    assert [run_id(r) for r in sample_runs(load_spec(toml))] == [run_id(r) for r in sample_runs(load_spec(yaml))]
    # numbers as people write them: PyYAML's YAML 1.1 alone reads 1e-3 as a string
    yaml.write_text("sampling: random\nn_runs: 5\nseed: 3\nspace:\n  dataset: moons\n  lr: {log_uniform: [1e-3, 1E0]}\n")
    assert [run_id(r) for r in sample_runs(load_spec(toml))] == [run_id(r) for r in sample_runs(load_spec(yaml))]
    yaml.write_text("space:\n  dataset: moons\n  lr: [1e-3, +2.5e-2, 3]\n  optimizer: [adam, '1e-3']\n")
    got = load_spec(yaml).space
    assert got["lr"] == [1e-3, 2.5e-2, 3] and got["optimizer"] == ["adam", "1e-3"]  # a quoted one stays a string
    bad = tmp_path / "bad.toml"
    bad.write_text("space = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "missing.toml")


def test_set_assignments():
    assert parse_assignment("optimizer=adam") == ("optimizer", "adam")
    assert parse_assignment("optimizer=sgd,adam") == ("optimizer", ["sgd", "adam"])
    assert parse_assignment("lr=[0.1, 0.01]") == ("lr", [0.1, 0.01])
    assert parse_assignment("lr={log_uniform=[1e-4, 1]}") == ("lr", {"log_uniform": [1e-4, 1]})
    assert parse_assignment("width=16,32") == ("width", [16, 32])  # each item a TOML value
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignment("lr")
    with pytest.raises(ConfigError, match="'rate'"):
        parse_assignment("rate=1")


def test_a_grid_refuses_a_draw_count():
    with pytest.raises(ConfigError, match="n_runs is for sampling = 'random'"):
        SweepSpec(sampling="grid", n_runs=3, space={"dataset": "moons"})
