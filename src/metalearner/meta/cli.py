"""``metalearner tower ...`` and ``metalearner fewshot ...``: results as JSON on stdout, progress
on stderr, figures as PNG. Register with ``app.add_typer(tower_app, name="tower")`` and
``app.add_typer(fewshot_app, name="fewshot")``."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import typer

from metalearner import options

tower_app = typer.Typer(add_completion=False, invoke_without_command=True, subcommand_metavar="",
                        help="Train a model with a hyperoptimizer tower (its hyperparameters learned by gradient descent).")  # fmt: skip
fewshot_app = typer.Typer(add_completion=False, invoke_without_command=True, subcommand_metavar="",
                          help="Few-shot meta-learning: MAML, Meta-SGD, or Meta-SGD with a learned meta-learning rate.")  # fmt: skip


# options both commands take
SEED = typer.Option(0, help="Seed for the initial weights and the data (batches or tasks).")
PLOT = typer.Option(None, help="Write the command's figure to this PNG (tower: each level's hyperparameters over training; "
                                "fewshot: the adaptation curves and the meta-training history).")


def _run_file(out: Path, command: str, what: dict, resume: bool) -> Path:
    """The checkpoint a run of ``command`` keeps in ``out``, named by a hash of ``what`` it
    depends on (its result JSON goes beside it), after checking ``out`` can take it; removed
    without ``resume``, announced on stderr when there is one to continue."""
    from metalearner.atomic import writable_folder
    from metalearner.errors import ConfigError

    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
    checkpoint = writable_folder(out) / f"{command}-{key}.safetensors"
    for path in (checkpoint, checkpoint.with_suffix(".json")):
        if path.is_dir():
            raise ConfigError(f"{path} is a folder where the run's file goes; move it or use another --out")
    if not resume:
        checkpoint.unlink(missing_ok=True)
    elif checkpoint.is_file():
        typer.echo(f"continuing the run kept in {checkpoint}", err=True)
    return checkpoint


@tower_app.callback(invoke_without_command=True)
def tower(
    task: str = typer.Option("mnist", help="Data set: mnist, fashion_mnist, mnist1d, moons, digits, synthetic."),
    base: str = typer.Option("adam", help="Base optimizer: sgd, momentum, adam."),
    height: int = typer.Option(2, help="Hyper levels above the base (>= 1)."),
    lr: float = typer.Option(1e-3, help="Initial learning rate of the base (learned)."),
    hyper_lr: float = typer.Option(0.03, help="Level 1's step size on the log scale; each level above 10x smaller."),
    learn: str = typer.Option("lr", help="lr (the base's learning rate) or all (also momentum/betas)."),
    trace_decay: float = typer.Option(0.999, help="Decay of the trace of past updates the lr's hypergradient reads (0: one-step)."),
    hyper_every: Optional[int] = typer.Option(None, help="Base steps per hyper step (the steps between are the plain base's; default: the tower's, 6)."),
    warmup: Optional[int] = typer.Option(None, help="Base steps of linear lr warm-up (0: none; default: the tower's, 300)."),
    max_update_ratio: Optional[float] = typer.Option(None, help="Ceiling on each tensor's step relative to its weights (0: none; default: the base's)."),
    depth: int = typer.Option(2, help="Hidden layers of the MLP."),
    width: int = typer.Option(128, help="Hidden units."),
    steps: int = typer.Option(1000, help="Training steps."),
    batch_size: int = typer.Option(128, help="Batch size."),
    n_train: Optional[int] = typer.Option(None, help="Subsample the training split."),
    seed: int = SEED,
    plot: Optional[Path] = PLOT,
    out: Path = typer.Option(Path("runs/tower"), help="Folder for the run's checkpoint (kept at each epoch's end) and the result "
                             "JSON, one pair per configuration: the same command continues where it stopped."),
    resume: bool = typer.Option(True, help="Continue from this configuration's checkpoint in --out (--no-resume starts over)."),
    data_dir: Optional[Path] = options.DATA_DIR,
    progress: bool = options.PROGRESS,
) -> None:
    """Train an MLP with a tower; print the final metrics and learned hyperparameters as JSON.
    The figure: each level's hyperparameters over training."""
    from metalearner.atomic import write_json
    from metalearner.meta.towers import Tower, tower_hparams
    from metalearner.progress import Progress
    from metalearner.tasks import ModelConfig, TaskConfig, make_task
    from metalearner.report.paths import figure_path
    from metalearner.train import fit

    plot = figure_path(plot)  # before the work
    config = TaskConfig(dataset=task, model=ModelConfig(depth=depth, width=width), batch_size=batch_size, seed=seed,
                        n_train=n_train)  # fmt: skip
    model_task = make_task(config, data_dir=str(data_dir) if data_dir else None)
    model = model_task.build_model(seed=seed)
    opt = Tower(model.parameters(), lr=lr, base=base, height=height, hyper_lr=hyper_lr, learn=learn, trace_decay=trace_decay,
                **{k: v for k, v in {"hyper_every": hyper_every, "warmup": warmup, "max_update_ratio": max_update_ratio}.items() if v is not None})  # fmt: skip
    rows: list[dict[str, float]] = [tower_hparams(opt)]
    opt.register_step_post_hook(lambda o, *_: rows.append(tower_hparams(o)))
    tower = {"base": base, "height": height, "lr": lr, "hyper_lr": hyper_lr, "learn": learn, "trace_decay": trace_decay,
             "hyper_every": opt.param_groups[0]["hyper_every"], "warmup": opt.param_groups[0]["warmup"],
             "max_update_ratio": opt.param_groups[0]["max_update_ratio"]}  # fmt: skip
    checkpoint = _run_file(out, "tower", {"task": config.to_dict(), "tower": tower, "steps": steps, "data_dir": str(data_dir)}, resume)
    with Progress(progress) as display:
        bar = display.bar(f"tower {base} h{height}", info="loss {loss:.4f}  val acc {acc:.4f}", loss=math.nan, acc=math.nan)
        result = fit(model, opt, model_task, steps=steps, seed=seed, progress=bar, checkpoint=checkpoint, keep={"rows": rows})
    if plot is not None:
        from metalearner.meta.plots import plot_tower

        plot_tower(rows, plot, title=f"{task}: {base} + tower of height {height}")
    output = {"task": config.to_dict(), "tower": tower, "final": result.final, "hyperparameters": rows[-1],
              "plot": str(plot) if plot else None, "checkpoint": str(checkpoint)}  # fmt: skip
    write_json(checkpoint.with_suffix(".json"), output)
    typer.echo(json.dumps(output))


@fewshot_app.callback(invoke_without_command=True)
def fewshot(
    task: str = typer.Option("sinusoid", help="sinusoid, mnist or fashion_mnist (meta-tested on unseen classes)."),
    method: str = typer.Option("maml", help="maml, meta_sgd or meta_meta (Meta-SGD whose meta-learning rate a tower learns)."),
    k_shot: int = typer.Option(5, help="Support examples per task (per class for images)."),
    n_way: int = typer.Option(5, help="Classes per episode (images)."),
    first_order: bool = typer.Option(False, help="First-order meta-gradients."),
    inner_steps: int = typer.Option(1, help="Inner adaptation steps."),
    inner_lr: float = typer.Option(0.01, help="Inner step size (MAML's, Meta-SGD's initial one)."),
    outer_lr: float = typer.Option(1e-3, help="Meta-learning rate (Adam; meta_meta's initial one)."),
    meta_batch: int = typer.Option(25, help="Tasks per meta-iteration."),
    iterations: int = typer.Option(1000, help="Meta-iterations."),
    outer_warmup: int = typer.Option(0, help="A linear warm-up of the meta-learning rate over this many meta-iterations (0: none; "
                                     "meta_meta learns its rate meanwhile)."),
    height: int = typer.Option(1, help="meta_meta: tower height over the outer Adam."),
    hyper_lr: float = typer.Option(0.03, help="meta_meta: the tower's step size."),
    hyper_source: str = typer.Option("train", help="meta_meta: the level's hypergradient from the training meta-loss "
                                     "('train') or from episodes of training classes held out of meta-training ('heldout')."),
    head: str = typer.Option("learned", help="Images: 'learned' (a meta-learned output layer) or 'prototypes' (set from "
                             "the support set's class means in feature space before adapting: ProtoMAML)."),
    augment: str = typer.Option("dihedral", help="Images: meta-train on each class under the square's symmetries as "
                                "classes of their own: 'dihedral' (8: turns and transposes), 'rotations' (4) or 'none'."),
    backbone: str = typer.Option("mlp", help="Images: the network, 'mlp' (784-128-128-N) or 'conv' (three 3x3 conv blocks of "
                                 "32 channels with max-pooling, then a linear layer; several times slower to meta-train)."),
    eval_tasks: int = typer.Option(600, help="Test tasks for the score and its 95% interval."),
    eval_steps: Optional[int] = typer.Option(None, help="Inner steps at test time (default: as trained)."),
    seed: int = SEED,
    plot: Optional[Path] = PLOT,
    out: Path = typer.Option(Path("runs/fewshot"), help="Folder for the meta-training's checkpoint (kept every 30 s and at the end) "
                             "and the result JSON, one pair per configuration: the same command continues where it stopped."),
    resume: bool = typer.Option(True, help="Continue from this configuration's checkpoint in --out (--no-resume starts over)."),
    data_dir: Optional[Path] = options.DATA_DIR,
    progress: bool = options.PROGRESS,
) -> None:
    """Meta-train, then evaluate on fresh tasks; print the score, interval and curves as JSON.
    The figure: the adaptation curve, the meta-loss and the meta-learning rate."""
    from metalearner.atomic import write_json
    from metalearner.errors import ConfigError
    from metalearner.progress import Progress
    from metalearner.meta.fewshot import FewShotConfig, check_head, make_families, train_and_evaluate
    from metalearner.report.paths import figure_path

    config = FewShotConfig(method=method, first_order=first_order, inner_steps=inner_steps, inner_lr=inner_lr,
                           outer_lr=outer_lr, meta_batch=meta_batch, iterations=iterations, height=height,
                           hyper_lr=hyper_lr, head=head, seed=seed, hyper_source=hyper_source, outer_warmup=outer_warmup)  # fmt: skip
    for name, value in (("k_shot", k_shot), ("eval_tasks", eval_tasks), ("eval_steps", eval_steps or 1)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    plot = figure_path(plot)  # before the work
    run = {"task": task, "k_shot": k_shot, "n_way": n_way if task != "sinusoid" else None, "augment": augment if task != "sinusoid" else None,
           "backbone": backbone if task != "sinusoid" else None}  # fmt: skip
    train, test = make_families(task, k_shot=k_shot, n_way=n_way, data_dir=str(data_dir) if data_dir else None, augment=augment,
                                backbone=backbone)  # fmt: skip
    check_head(config, train)  # the user's mistakes before anything is written
    checkpoint = _run_file(out, "fewshot", {**run, "config": config.to_dict(), "data_dir": str(data_dir)}, resume)
    with Progress(progress) as display:
        bar = display.bar(f"{method} {task}", info="meta-loss {loss:.4f}", loss=math.nan)
        result = train_and_evaluate(train, test, config, n_tasks=eval_tasks, steps=eval_steps, checkpoint=checkpoint,
                                    progress=lambda i, n, loss: bar.update(i, n, loss=loss))  # fmt: skip
    if plot is not None:
        from metalearner.meta.plots import plot_fewshot

        plot_fewshot(result, plot, title=f"{method} on {task}, {k_shot}-shot")
    output = {**run, **result, "plot": str(plot) if plot else None, "checkpoint": str(checkpoint)}
    write_json(checkpoint.with_suffix(".json"), output)
    typer.echo(json.dumps(output))
