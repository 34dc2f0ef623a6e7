"""MAML family: exact meta-gradients, rates that learn, a meta-level that corrects itself."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from metalearner.errors import ConfigError, DataError
from metalearner.meta.fewshot import (
    ClassSplit, Episodes, FewShotConfig, Sinusoid, _split, evaluate, image_splits, init_learner, make_families, meta_loss, meta_train,
    nearest_centroid, outer_optimizer, prototype_head,
)  # fmt: skip
from metalearner.tasks import load_dataset


def setup(method: str, seed: int = 0, tasks: int = 3, k: int = 5):
    torch.manual_seed(seed)
    family = Sinusoid(k_shot=k, k_query=k)
    learner = init_learner(family.model().double(), FewShotConfig(method=method, inner_lr=0.05))
    batch = Episodes(*(t.double() for t in family.sample(tasks, torch.Generator().manual_seed(seed))))
    return family, learner, batch


def meta_grads(learner, family, batch, steps: int, first_order: bool) -> dict[str, torch.Tensor]:
    for p in learner.meta.values():
        p.grad = None
    meta_loss(learner.meta, learner.fixed, learner.model, family.loss, steps, first_order, batch).backward()
    return {k: p.grad.clone() for k, p in learner.meta.items()}


def forward(ws: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The 1-40-40-1 ReLU MLP written out by hand (independent of functional_call)."""
    for i in range(0, len(ws), 2):
        x = F.linear(x, ws[i], ws[i + 1])
        x = torch.relu(x) if i + 2 < len(ws) else x
    return x


def test_second_order_maml_matches_autograd_through_the_unrolled_inner_loop():
    family, learner, batch = setup("maml")
    ours = meta_grads(learner, family, batch, steps=3, first_order=False)
    init = [p.detach().clone().requires_grad_() for p in learner.meta.values()]
    losses = []
    for xs, ys, xq, yq in zip(*batch):
        ws = init
        for _ in range(3):
            g = torch.autograd.grad(F.mse_loss(forward(ws, xs), ys), ws, create_graph=True)
            ws = [w - 0.05 * gi for w, gi in zip(ws, g)]
        losses.append(F.mse_loss(forward(ws, xq), yq))
    reference = torch.autograd.grad(torch.stack(losses).mean(), init)
    for (name, a), b in zip(ours.items(), reference):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_first_order_maml_is_the_query_gradient_at_the_adapted_weights():
    family, learner, batch = setup("maml")
    ours = meta_grads(learner, family, batch, steps=1, first_order=True)
    init = [p.detach() for p in learner.meta.values()]
    expected = [torch.zeros_like(w) for w in init]
    for xs, ys, xq, yq in zip(*batch):
        ws = [w.clone().requires_grad_() for w in init]
        g = torch.autograd.grad(F.mse_loss(forward(ws, xs), ys), ws)
        adapted = [(w - 0.05 * gi).detach().requires_grad_() for w, gi in zip(init, g)]
        for e, gq in zip(expected, torch.autograd.grad(F.mse_loss(forward(adapted, xq), yq), adapted)):
            e += gq / len(batch.x_support)
    for a, b in zip(ours.values(), expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    second = meta_grads(learner, family, batch, steps=1, first_order=False)
    assert not all(torch.allclose(a, b) for a, b in zip(ours.values(), second.values()))


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_sgd_rates_receive_their_gradient_in_both_variants(first_order):
    """One inner step: dL_query/dα = −∇L_query(θ') ⊙ ∇L_support(θ_0), first order or not."""
    family, learner, batch = setup("meta_sgd")
    grads = meta_grads(learner, family, batch, steps=1, first_order=first_order)
    params, rates = _split({k: v.detach() for k, v in learner.meta.items()}, learner.fixed)
    names = list(params)
    expected = {k: torch.zeros_like(v) for k, v in params.items()}
    for xs, ys, xq, yq in zip(*batch):
        ws = [params[k].clone().requires_grad_() for k in names]
        gs = torch.autograd.grad(F.mse_loss(forward(ws, xs), ys), ws)
        adapted = [(w - rates[k] * g).detach().requires_grad_() for k, w, g in zip(names, ws, gs)]
        gq = torch.autograd.grad(F.mse_loss(forward(adapted, xq), yq), adapted)
        for k, a, b in zip(names, gq, gs):
            expected[k] -= a * b / len(batch.x_support)
    for k in names:
        assert grads[f"rate/{k}"].abs().sum() > 0
        torch.testing.assert_close(grads[f"rate/{k}"], expected[k], rtol=1e-8, atol=1e-12)


def test_first_order_meta_sgd_rates_move_in_training():
    config = FewShotConfig(method="meta_sgd", first_order=True, iterations=20, meta_batch=4, outer_lr=1e-2)
    learner, _ = meta_train(Sinusoid(k_shot=5), config)
    moved = [float((v.detach() - config.inner_lr).abs().max()) for k, v in learner.meta.items() if k.startswith("rate/")]
    assert len(moved) == 6 and min(moved) > 1e-3


class LinearTasks:
    """A constructed family: y = w·x with w = w̄ + 0.3·noise per task, fit by a linear model
    (its meta-loss is a smooth quadratic, so a good meta-learning rate is easy to find)."""

    metric, loss = "mse", staticmethod(F.mse_loss)

    def __init__(self, dim: int = 4) -> None:
        self.mean = torch.linspace(-2.0, 2.0, dim)

    def sample(self, n, gen):
        w = self.mean + 0.3 * torch.randn(n, 1, len(self.mean), generator=gen)
        x = torch.randn(n, 20, len(self.mean), generator=gen)
        y = (x * w).sum(-1, keepdim=True)
        return Episodes(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])

    def model(self):
        return torch.nn.Linear(len(self.mean), 1)


def final_loss(config: FewShotConfig) -> tuple[float, float]:
    """Query MSE on fresh tasks after meta-training, and the outer lr it ended with."""
    family = LinearTasks()
    learner, history = meta_train(family, config, log_every=config.iterations)
    return evaluate(learner, family, n_tasks=200, steps=1)["mean"], history[-1]["outer_lr"]


def test_meta_meta_moves_a_too_large_and_a_too_small_meta_learning_rate_toward_a_good_one():
    """Fixed rates 10x off the best of the grid lose; started there, the meta-meta level moves
    the rate the right way and ends within 20% of the best fixed rate's query loss."""
    base = dict(inner_lr=0.05, meta_batch=8, iterations=300)
    fixed = {lr: final_loss(FewShotConfig(method="meta_sgd", outer_lr=lr, **base))[0] for lr in (0.003, 0.03, 0.3)}
    assert min(fixed, key=fixed.get) == 0.03 and min(fixed[0.003], fixed[0.3]) > 1.3 * fixed[0.03]
    for start in (0.3, 0.003):
        loss, learned = final_loss(FewShotConfig(method="meta_meta", outer_lr=start, hyper_lr=0.05, **base))
        assert (learned < start) if start > 0.03 else (learned > start)
        assert loss < 1.2 * fixed[0.03], (start, learned, loss, fixed)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_does_not_grow_with_meta_iterations():
    family = Sinusoid(k_shot=5)
    rss = []
    for iterations in (30, 230):
        meta_train(family, FewShotConfig(method="meta_meta", iterations=iterations, meta_batch=10))
        rss.append(_rss_bytes())
    assert rss[1] - rss[0] < 8 * 2**20


def test_sinusoid_follows_the_protocol():
    b = Sinusoid(k_shot=5, k_query=7).sample(200, torch.Generator().manual_seed(0))
    assert b.x_support.shape == (200, 5, 1) and b.x_query.shape == (200, 7, 1)
    assert b.x_support.abs().max() <= 5 and torch.cat([b.y_support, b.y_query], 1).abs().max() <= 5


def test_image_episodes_use_unseen_classes_for_meta_test(shared_data):
    splits = load_dataset("mnist", data_dir=shared_data)
    train, test = image_splits(splits, n_way=5, k_shot=1)
    assert {int(splits.y_train[i[0]]) for i in train.by_class} == {0, 1, 2, 3, 4}
    assert {int(splits.y_test[i[0]]) for i in test.by_class} == {5, 6, 7, 8, 9}
    b = test.sample(3, torch.Generator().manual_seed(0))
    assert b.x_support.shape == (3, 5, 784) and b.x_query.shape == (3, 75, 784)
    assert sorted(b.y_support[0].tolist()) == [0, 1, 2, 3, 4]
    learner, _ = meta_train(train, FewShotConfig(method="maml", inner_lr=0.1, iterations=30, meta_batch=4, outer_lr=1e-2))
    result = evaluate(learner, test, n_tasks=20, steps=2)
    assert result["metric"] == "acc" and 0.2 < result["mean"] <= 1 and len(result["curve"]) == 3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(method="reptile"), "unknown few-shot method 'reptile'; choose from maml, meta_sgd, meta_meta"),
        (dict(inner_steps=0), "inner_steps must be >= 1"),
        (dict(outer_lr=0.0), "outer_lr must be a positive number"),
        (dict(head="linear"), "unknown head 'linear'; choose from learned, prototypes"),
    ],
)
def test_invalid_configs_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError) as err:
        FewShotConfig(**kwargs)
    assert message in str(err.value)


def test_nearest_centroid_labels_each_query_by_the_nearest_support_mean():
    # two well-separated classes and one query that sits nearer the other class's mean
    x = torch.tensor([[0.0, 0.0], [0.2, 0.0], [10.0, 0.0], [10.2, 0.0], [9.0, 0.0], [0.1, 0.0], [6.0, 0.0], [4.0, 0.0]])
    y = torch.tensor([0, 0, 1, 1, 1, 0, 0, 1])
    family = ClassSplit(x, y, (0, 1), n_way=2, k_shot=1, k_query=3)
    result = nearest_centroid(family, n_tasks=50, seed=0)
    hits = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):  # by hand, on the same episodes
        xs, ys, xq, yq = (t[0] for t in family.sample(1, gen))
        means = torch.stack([xs[ys == c].mean(0) for c in range(2)])
        hits.append(float(((xq[:, None] - means).norm(dim=-1).argmin(-1) == yq).double().mean()))
    assert result["mean"] == pytest.approx(sum(hits) / 50) and 0.5 < result["mean"] < 1
    assert result["ci95"][0] < result["mean"] < result["ci95"][1]


def test_class_split_refuses_too_few_classes():
    with pytest.raises(ConfigError, match="5-way episodes need at least 5 classes"):
        ClassSplit(torch.zeros(10, 4), torch.arange(10) % 3, (0, 1, 2), n_way=5)
    with pytest.raises(ConfigError, match="n_way must be an integer >= 2"):  # one class: every answer right, a score of 1 that means nothing
        ClassSplit(torch.zeros(10, 4), torch.arange(10) % 3, (0, 1, 2), n_way=1)


def _symmetries(img: torch.Tensor) -> list[torch.Tensor]:
    """The square's eight symmetries of a (side, side) image, in ClassSplit's order."""
    return [(img.T if s >= 4 else img).rot90(s % 4).flatten() for s in range(8)]


@pytest.mark.parametrize("augment, n_sym", [("dihedral", 8), ("rotations", 4)])
def test_class_augmentation_makes_each_symmetry_of_a_class_a_class(augment, n_sym):
    # two classes of three random (asymmetric) 3x3 images: 2 x n_sym classes, each drawn once per episode
    x = torch.randn(6, 9, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    family = ClassSplit(x, y, (0, 1), n_way=2 * n_sym, k_shot=1, k_query=2, augment=augment)
    table = {tuple(v.tolist()): (int(y[i]), s) for i in range(6) for s, v in enumerate(_symmetries(x[i].view(3, 3)))}
    for b in (family.sample(4, torch.Generator().manual_seed(1)),):
        for t in range(4):
            images = torch.cat([b.x_support[t], b.x_query[t]])
            labels = torch.cat([b.y_support[t], b.y_query[t]]).tolist()
            seen = {}
            for img, label in zip(images, labels):
                key = table[tuple(img.tolist())]  # every image is a symmetry of a training image
                assert seen.setdefault(label, key) == key  # one (class, symmetry) per episode label
            assert sorted(seen.values()) == [(c, s) for c in (0, 1) for s in range(n_sym)]


def test_class_augmentation_off_draws_the_images_as_they_are():
    # the same draws as by hand: a permutation of the classes per task, then of each class's images
    x, y = torch.randn(24, 9, generator=torch.Generator().manual_seed(0)), torch.arange(24) % 4
    family = ClassSplit(x, y, (0, 1, 2, 3), n_way=3, k_shot=2, k_query=1, augment="none")
    b = family.sample(5, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    for t in range(5):
        chosen = torch.randperm(4, generator=gen)[:3]
        pools = [torch.nonzero(y == int(c)).flatten() for c in chosen]
        idx = torch.stack([pool[torch.randperm(len(pool), generator=gen)[:3]] for pool in pools])  # (way, k_shot + k_query)
        assert torch.equal(b.x_support[t], x[idx[:, :2]].reshape(-1, 9)) and torch.equal(b.x_query[t], x[idx[:, 2:]].reshape(-1, 9))


def test_class_augmentation_refusals_are_one_line_errors():
    x, y = torch.zeros(30, 9), torch.arange(30) % 3
    ClassSplit(x, y, (0, 1, 2), n_way=10, k_query=2, augment="rotations")  # 12 classes: enough
    with pytest.raises(ConfigError, match="10-way episodes need at least 10 classes, got 3"):
        ClassSplit(x, y, (0, 1, 2), n_way=10, k_query=2, augment="none")
    with pytest.raises(ConfigError, match="needs square one-channel images, got 8$"):
        ClassSplit(torch.zeros(30, 8), y, (0, 1, 2), n_way=3, k_query=2, augment="dihedral")
    with pytest.raises(ConfigError, match="needs square one-channel images, got 4x8x8"):  # 256 features: square, but 4 channels
        ClassSplit(torch.zeros(30, 4, 8, 8), y, (0, 1, 2), n_way=3, k_query=2, augment="rotations")
    ClassSplit(torch.zeros(30, 1, 8, 8), y, (0, 1, 2), n_way=3, k_query=2, augment="rotations")
    with pytest.raises(ConfigError, match="unknown class augmentation 'flips'; choose from none, rotations, dihedral"):
        ClassSplit(x, y, (0, 1, 2), n_way=3, augment="flips")


def test_prototype_head_labels_each_query_by_the_nearest_class_mean_in_feature_space():
    torch.manual_seed(0)
    family = ClassSplit(torch.randn(60, 6), torch.arange(60) % 3, (0, 1, 2), n_way=3, k_shot=2, k_query=4)
    model = family.model()
    params = dict(model.named_parameters())
    xs, ys, xq, yq = (t[0] for t in family.sample(1, torch.Generator().manual_seed(0)))
    head = prototype_head(model, params, xs, ys)
    feats = lambda x: model[:-1](x)  # noqa: E731
    centres = torch.stack([feats(xs)[ys == c].mean(0) for c in range(3)])
    logits = torch.func.functional_call(model, head, (xq,))
    # 2c·φ − ‖c‖² = ‖φ‖² − ‖φ − c‖²: the logits are minus the squared distances, up to a per-query constant
    dist = torch.cdist(feats(xq), centres).square()
    assert torch.allclose(logits - logits[:, :1], -(dist - dist[:, :1]), atol=1e-4)
    assert set(head) == set(params) and all(head[k] is params[k] for k in params if not k.startswith("4."))
    # the head is a function of the body: the meta-gradient reaches it through the prototypes
    assert torch.autograd.grad(head["4.weight"].sum(), params["0.weight"])[0].abs().sum() > 0


def test_prototype_head_is_what_evaluation_and_adaptation_start_from():
    torch.manual_seed(0)
    family = ClassSplit(torch.randn(90, 6), torch.arange(90) % 3, (0, 1, 2), n_way=3, k_shot=2, k_query=5)
    learner = init_learner(family.model(), FewShotConfig(method="maml", head="prototypes", inner_lr=0.1))
    body = learner.model[:-1]
    hits = []
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for xs, ys, xq, yq in zip(*family.sample(20, gen)):  # by hand, on the episodes evaluate draws
            centres = torch.stack([body(xs)[ys == c].mean(0) for c in range(3)])
            hits.append(float((torch.cdist(body(xq), centres).argmin(-1) == yq).double().mean()))
    result = evaluate(learner, family, n_tasks=20, steps=0, seed=7)
    assert result["mean"] == pytest.approx(sum(hits) / 20)
    xs, ys = family.sample(1, torch.Generator().manual_seed(0))[:2]
    start = prototype_head(learner.model, dict(learner.model.named_parameters()), xs[0], ys[0])
    adapted = learner.adapt(xs[0], ys[0], family.loss, 0)
    assert all(torch.equal(adapted[k], start[k]) for k in start)


def test_prototype_head_meta_trains_the_body_through_the_prototypes():
    torch.manual_seed(0)
    family = ClassSplit(torch.randn(120, 6), torch.arange(120) % 5, (0, 1, 2, 3, 4), n_way=5, k_shot=1, k_query=5)
    learner = init_learner(family.model(), FewShotConfig(method="meta_sgd", head="prototypes", inner_lr=0.1))
    batch = family.sample(4, torch.Generator().manual_seed(0))
    meta_loss(learner.meta, learner.fixed, learner.model, family.loss, 1, False, batch, "prototypes").backward()
    grads = {k: p.grad for k, p in learner.meta.items()}
    assert grads["0.weight"].abs().sum() > 0 and grads["rate/4.weight"].abs().sum() > 0  # body and head rates learn
    assert grads["4.weight"] is None  # the meta-learned output layer is replaced, so unused
    learner, _ = meta_train(family, FewShotConfig(method="maml", head="prototypes", iterations=3, meta_batch=2))
    assert evaluate(learner, family, n_tasks=4, steps=1)["metric"] == "acc"


@pytest.mark.parametrize("side", [8, 28])
def test_conv_backbone_meta_trains_its_convolutions_with_either_head(side):
    """Three conv blocks (side -> side // 8) and a linear layer; the prototype head reads the
    flattened conv features, and the meta-gradient reaches the first convolution."""
    torch.manual_seed(0)
    family = ClassSplit(torch.randn(100, 1, side, side), torch.arange(100) % 5, (0, 1, 2, 3, 4), n_way=5, k_shot=1, k_query=3,
                        augment="rotations", backbone="conv")  # fmt: skip
    model = family.model()
    assert [type(m).__name__ for m in model if type(m).__name__ == "Conv2d"] == ["Conv2d"] * 3
    assert model(torch.randn(7, side * side)).shape == (7, 5)
    for head in ("learned", "prototypes"):
        learner = init_learner(model, FewShotConfig(method="meta_sgd", head=head, inner_lr=0.1))
        meta_loss(learner.meta, learner.fixed, learner.model, family.loss, 1, False, family.sample(2, torch.Generator().manual_seed(0)),
                  head).backward()  # fmt: skip
        assert learner.meta["1.weight"].grad.abs().sum() > 0 and learner.meta["rate/1.weight"].grad.abs().sum() > 0
    train, held = family.hold_out()
    assert train.backbone == held.backbone == "conv"


def test_conv_backbone_refusals_are_one_line_errors():
    y = torch.arange(30) % 3
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'; choose from mlp, conv"):
        ClassSplit(torch.zeros(30, 64), y, (0, 1, 2), n_way=3, k_query=2, backbone="resnet")
    with pytest.raises(ConfigError, match="the conv backbone needs square one-channel images, got 8"):
        ClassSplit(torch.zeros(30, 8), y, (0, 1, 2), n_way=3, k_query=2, backbone="conv")
    with pytest.raises(ConfigError, match="the conv backbone needs images of at least 8x8, got 4x4"):
        ClassSplit(torch.zeros(30, 16), y, (0, 1, 2), n_way=3, k_query=2, backbone="conv")
    with pytest.raises(ConfigError, match="the conv backbone is for image episodes"):
        make_families("sinusoid", k_shot=5, backbone="conv")


def test_prototype_head_refuses_regression():
    with pytest.raises(ConfigError, match="prototype head is for classification"):
        meta_train(Sinusoid(), FewShotConfig(head="prototypes", iterations=1))


def test_the_meta_meta_level_corrects_the_meta_learning_rate_from_its_first_iteration():
    """No warm-up (the towers' default has one): its lr is the meta-learning rate as given; and
    its hyper levels' Adam is the one its results were measured with, whatever the towers' default."""
    opt, schedule = outer_optimizer({"w": torch.zeros(3, requires_grad=True)}, FewShotConfig(method="meta_meta", outer_lr=0.01))
    assert schedule is None
    opt.param_groups[0]["params"][0].grad = torch.ones(3)
    opt.step()
    assert opt.param_groups[0]["warmup"] == 0 and opt.param_groups[0]["effective_lr"] == 0.01
    assert opt.param_groups[0]["hyper_betas"] == (0.9, 0.9)  # as benchmarks/results/fewshot.json was measured
    assert opt.param_groups[0]["max_update_ratio"] == 0.0  # no ceiling on its steps: as measured


@pytest.mark.parametrize("method", ["maml", "meta_sgd", "meta_meta"])
def test_outer_warmup_ramps_the_applied_meta_learning_rate_the_same_way_for_every_method(method):
    """Iteration t applies outer_lr * min(1, t / outer_warmup): a tower by its own warm-up (the level
    learning outer_lr meanwhile: held still here by a negligible step size), Adam by a LambdaLR."""
    w = torch.zeros(3, requires_grad=True)
    opt, schedule = outer_optimizer({"w": w}, FewShotConfig(method=method, outer_lr=0.01, outer_warmup=4, hyper_lr=1e-12))
    applied = []
    for _ in range(6):
        before = w.detach().clone()
        w.grad = torch.ones(3)
        opt.step()
        if schedule is not None:
            schedule.step()
        applied.append(float(before[0] - w.detach()[0]))  # Adam's first steps move by the lr applied
    assert applied == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01], rel=1e-4)


def test_outer_warmup_is_checked():
    with pytest.raises(ConfigError, match="outer_warmup"):
        FewShotConfig(outer_warmup=-1)


@pytest.mark.parametrize("augment, held", [("dihedral", (4,)), ("rotations", (3, 4))])
def test_hold_out_sets_aside_the_last_classes_enough_for_an_episode(augment, held):
    x, y = torch.randn(200, 16), torch.arange(200) % 5
    train, heldout = ClassSplit(x, y, (0, 1, 2, 3, 4), n_way=5, k_shot=1, k_query=3, augment=augment).hold_out()
    assert heldout.classes == held and train.classes == tuple(c for c in range(5) if c not in held)
    assert heldout.symmetries == train.symmetries and heldout.sample(2, torch.Generator().manual_seed(0)).x_support.shape == (2, 5, 16)
    with pytest.raises(ConfigError, match="holding out 5 of 5 classes leaves too few for 5-way episodes"):
        ClassSplit(x, y, (0, 1, 2, 3, 4), n_way=5, augment="none").hold_out()


def test_a_heldout_meta_meta_level_trains_on_the_rest_and_reads_its_hypergradient_from_held_out_classes(monkeypatch):
    """The weights follow the training classes' meta-gradient (``.grad``); the level, through
    ``hyper_grads``, the held-out classes' at the same weights (with the prototype head, whose
    output layer has no gradient, left out of both)."""
    from metalearner.meta import fewshot
    from metalearner.meta.towers import Tower

    x, y = torch.randn(300, 16), torch.arange(300) % 5
    family = ClassSplit(x, y, (0, 1, 2, 3, 4), n_way=5, k_shot=1, k_query=2, augment="dihedral")
    config = FewShotConfig(method="meta_meta", hyper_source="heldout", iterations=3, meta_batch=2, head="prototypes")
    names = list(init_learner(family.model(), config).meta)
    drawn, checked = [], []
    sample = ClassSplit.sample

    def recording_sample(self, n, gen):
        drawn.append((self.classes, sample(self, n, gen)))
        return drawn[-1][1]

    step = Tower.step

    def checking_step(self, closure=None, *, hyper_grads=None):
        meta = dict(zip(names, self.param_groups[0]["params"]))
        with torch.enable_grad():
            held = meta_loss(meta, {}, family.model(), F.cross_entropy, 1, False, drawn[-1][1], "prototypes")
            expected = torch.autograd.grad(held, list(meta.values()), allow_unused=True)
        used = [p for p, g in zip(meta.values(), expected) if g is not None]
        assert len(used) == len(names) - 2 and set(hyper_grads) == set(used) == {p for p in meta.values() if p.grad is not None}
        assert all(torch.equal(hyper_grads[p], g) for p, g in zip(meta.values(), expected) if g is not None)
        assert any(not torch.equal(hyper_grads[p], p.grad) for p in used)  # not the training gradient
        checked.append(True)
        return step(self, closure, hyper_grads=hyper_grads)

    monkeypatch.setattr(ClassSplit, "sample", recording_sample)
    monkeypatch.setattr(Tower, "step", checking_step)
    learner, history = fewshot.meta_train(family, config)
    assert [classes for classes, _ in drawn] == [(0, 1, 2, 3), (4,)] * 3 and len(checked) == 3
    assert history[-1]["outer_lr"] != config.outer_lr
    for method in ("maml", "meta_sgd"):
        with pytest.raises(ConfigError, match="hyper_source is the meta_meta level's"):
            FewShotConfig(method=method, hyper_source="heldout")
    with pytest.raises(ConfigError, match="unknown hyper_source 'test'; choose from train, heldout"):
        FewShotConfig(method="meta_meta", hyper_source="test")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method, warmup", [("maml", 4), ("meta_sgd", 0), ("meta_meta", 3)])
def test_an_interrupted_meta_training_continues_from_its_checkpoint_as_if_never_stopped(tmp_path, method, warmup):
    config = FewShotConfig(method=method, inner_lr=0.05, meta_batch=3, iterations=9, outer_warmup=warmup)
    family = Sinusoid(k_shot=5, k_query=5)
    whole, history = meta_train(family, config, log_every=1)

    def stop_at_6(it, n, loss):
        if it == 6:
            raise _Stop

    ckpt = tmp_path / "run.safetensors"
    with pytest.raises(_Stop):  # a kill after iteration 6's update, before its checkpoint: 5 iterations kept
        meta_train(family, config, log_every=1, checkpoint=ckpt, save_every=0.0, progress=stop_at_6)
    seen = []
    resumed, resumed_history = meta_train(family, config, log_every=1, checkpoint=ckpt, progress=lambda it, n, loss: seen.append(it))
    assert seen[0] == 5 and seen[1:] == [6, 7, 8, 9]  # told where it continues from, then the rest
    assert resumed_history == history
    for name, value in whole.meta.items():
        assert torch.equal(resumed.meta[name], value), name
    again, _ = meta_train(family, config, log_every=1, checkpoint=ckpt)  # a finished checkpoint: nothing left to train
    assert all(torch.equal(again.meta[k], v) for k, v in whole.meta.items())


def test_a_checkpoint_of_another_configuration_is_refused_in_one_line(tmp_path):
    family = Sinusoid(k_shot=5, k_query=5)
    ckpt = tmp_path / "run.safetensors"
    meta_train(family, FewShotConfig(method="maml", meta_batch=2, iterations=2), checkpoint=ckpt)
    with pytest.raises(ConfigError, match="holds a meta-training of another configuration"):
        meta_train(family, FewShotConfig(method="maml", meta_batch=2, iterations=2, inner_lr=0.02), checkpoint=ckpt)
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="is not a readable checkpoint"):
        meta_train(family, FewShotConfig(method="maml", meta_batch=2, iterations=2), checkpoint=tmp_path / "junk.safetensors")
