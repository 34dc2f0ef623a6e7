"""``metalearner meta-train`` and ``metalearner lopt ...``: thin commands over the library.

``meta_train_command`` is registered once, at the top level (``metalearner.cli``).

    metalearner meta-train --kind opt2vec --out runs/meta/opt2vec
    metalearner meta-train --kind learned --out runs/meta/learned     # the batched PES engine
    metalearner lopt card --opt2vec runs/meta/opt2vec --controller runs/meta/controller --ship
    metalearner lopt ship-learned runs/meta/learned
    metalearner lopt ship-learned --fan-in-power 0.5 --fan-in-scope input   # the shipped weights' fixed factor
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from metalearner import options

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learned optimizers: evaluate, ship, analyse (meta-train is `metalearner meta-train`).")


def meta_train_command(
    kind: str = typer.Option("opt2vec", help="opt2vec or controller (process-per-unroll ES), or learned (the batched PES engine)."),
    out: Path = typer.Option(Path("runs/meta"), help="Output folder (checkpoint, state.json, weights)."),
    seed: int = typer.Option(0, help="Seed of the tasks, noise and initial policy."),
    outer_steps: Optional[int] = typer.Option(None, help="Outer steps (default: 40 for opt2vec and controller, 500 for learned)."),
    pairs: Optional[int] = typer.Option(None, help="Antithetic pairs per step (default 6; --kind learned: 16)."),
    unroll_steps: Optional[int] = typer.Option(None, help="Inner steps per unroll (default 512; --kind learned: the PES truncation, default 64)."),
    workers: Optional[int] = typer.Option(None, help="Local worker processes (default 2; --kind learned: its populations run in this "
                                                  "process unless --workers or --executor ray is given); 0 runs inline."),
    executor: str = options.EXECUTOR,
    address: Optional[str] = options.ADDRESS,
    resume: bool = typer.Option(True, help="Resume from a checkpoint in --out (--no-resume starts over, replacing the checkpoint and weights there)."),
    prior: Optional[str] = typer.Option(None, help="--kind learned: where the policy starts, none (the plain base; default) or "
                                                   "integrator (the lr follows its hypergradient's sign; docs/meta_training.md)."),
    base: Optional[str] = typer.Option(None, help="--kind learned: the base optimizer, schedulefree (default) or adam."),
    scales: Optional[str] = typer.Option(None, help="--kind learned: per_tensor lr multipliers (default) or global (one per network)."),
    device: str = options.DEVICE,
    progress: bool = options.PROGRESS,
) -> None:
    """Meta-train a learned optimizer on the default task distribution."""
    from metalearner.errors import ConfigError
    from metalearner.parallel import make_executor

    if kind == "learned":
        if device != "cpu":
            raise ConfigError("--kind learned runs on the CPU (its populations are small batched networks); --device is for opt2vec and controller")
        # populations in this process unless workers or another executor are asked for (--workers 0: here too)
        asked = executor != "local" or address is not None or bool(workers)
        ex = make_executor(executor, workers, address=address) if asked else None
        try:
            return _engine(out, seed, outer_steps, pairs, unroll_steps, resume, progress, ex, prior=prior, base=base, scales=scales)
        finally:
            if ex is not None:
                ex.close()
    for flag, value in (("--prior", prior), ("--base", base), ("--scales", scales)):
        if value is not None:
            raise ConfigError(f"{flag} is for --kind learned (the batched engine)")
    from metalearner.lopt.meta_train import default_config, meta_train
    from metalearner.train.run import resolve_device

    resolve_device(device)  # a missing GPU fails here, in one line
    overrides = {k: v for k, v in dict(seed=seed, outer_steps=outer_steps, pairs=pairs, unroll_steps=unroll_steps).items() if v is not None}
    if device != "cpu":
        overrides["device"] = device
    cfg = default_config(kind, **overrides)
    ex = make_executor(executor, 2 if workers is None else workers, address=address)
    try:
        weights, state = meta_train(cfg, out, executor=ex, resume=resume, progress=progress)
    finally:
        ex.close()
    ev = state.evaluation
    typer.echo(json.dumps({"kind": kind, "out": str(out), "weights": str(out / f"{kind}.safetensors"), "outer_steps": state.step, "n_params": weights.n_params,
                           "eval_meta_loss_initial": ev["initial_mean"], "eval_meta_loss_final": ev["final_mean"]}))  # fmt: skip


def _engine(out: Path, seed: int, outer_steps: int | None, pairs: int | None, truncation: int | None, resume: bool, progress: bool,
            executor: Any = None, **policy: str | None) -> None:  # fmt: skip
    """``--kind learned``: the batched engine (``lopt.engine``) with its default task family;
    ``executor``: its populations on workers (None: in this process); ``policy``: ``prior``,
    ``base``, ``scales`` (None: the default's)."""
    from dataclasses import replace

    from metalearner.lopt.engine import WEIGHTS, EngineConfig, run
    from metalearner.progress import Progress

    given = dict(seed=seed, outer_steps=outer_steps, pairs=pairs, truncation=truncation, **policy)
    cfg = replace(EngineConfig(), **{k: v for k, v in given.items() if v is not None})
    with Progress(progress) as display:
        bar = display.bar("meta-train learned", cfg.outer_steps, info="meta-loss {meta_loss:.4f}", meta_loss=float("nan"))
        _, record = run(cfg, out, resume=resume, on_step=lambda r: bar.update(r["step"], meta_loss=r["meta_loss"]), executor=executor)
    ev = record.evaluation
    typer.echo(json.dumps({"kind": "learned", "out": str(out), "weights": str(out / WEIGHTS), "outer_steps": record.step,
                           "eval_meta_loss_initial": float(sum(ev["initial"]) / len(ev["initial"])),
                           "eval_meta_loss_final": float(sum(ev["final"]) / len(ev["final"]))}))  # fmt: skip


@app.command("card")
def card_command(
    opt2vec: Path = typer.Option(..., help="Meta-train output folder of Opt2Vec."),
    controller: Path = typer.Option(..., help="Meta-train output folder of the controller."),
    data_dir: Optional[str] = typer.Option(None, help="Folder with the MNIST files."),
    epochs: float = typer.Option(2.0, help="Epochs of the held-out MNIST evaluation."),
    seeds: int = typer.Option(2, help="Seeds of the held-out evaluation."),
    ship: bool = typer.Option(False, help="Copy the weights and card into metalearner/lopt/pretrained."),
    out: Optional[Path] = typer.Option(None, help="Where to write the card (default: beside --opt2vec)."),
) -> None:
    """Evaluate trained weights frozen on a held-out MNIST MLP and write the model card."""
    from metalearner.errors import ConfigError, DataError
    from metalearner.lopt.card import write_card

    if epochs <= 0 or seeds < 1:
        raise ConfigError(f"--epochs must be > 0 and --seeds >= 1, got {epochs} and {seeds}")
    for folder in (opt2vec, controller):
        if not (folder / "state.json").exists():
            raise DataError(f"{folder} is not a meta-train output folder (no state.json): run `metalearner meta-train` first")

    card = write_card(opt2vec, controller, data_dir=data_dir, epochs=epochs, seeds=seeds, ship=ship, out=out,
                      command=" ".join(["metalearner lopt card", *sys.argv[3:]]))  # fmt: skip
    typer.echo(json.dumps(card["evaluation"]["summary"]))


@app.command("ship-learned")
def ship_learned_command(
    engine: Optional[Path] = typer.Argument(None, help="Output folder of `metalearner meta-train --kind learned` (none: the weights shipped now)."),
    fan_in_power: Optional[float] = typer.Option(None, help="A fixed lr factor min(1, (128/fan-in)^POWER) in the shipped weights' metadata (0: none)."),
    fan_in_scope: Optional[str] = typer.Option(None, help="With --fan-in-power: the tensors it scales, all (every matrix) or input "
                                                        "(the input layer only); default: the weights' own (all when they have none)."),
) -> None:
    """Ship an engine run's weights as the default `learned_sf` weights and record them in the model card."""
    from metalearner.errors import ConfigError, DataError
    from metalearner.lopt.card import ship_learned
    from metalearner.lopt.policy import FAN_IN_SCOPES

    if fan_in_scope is not None and fan_in_power is None:
        raise ConfigError("--fan-in-scope needs --fan-in-power (0 takes the factor off)")
    if engine is None and fan_in_power is None:
        raise ConfigError("give an engine folder to ship, or --fan-in-power to set the shipped weights' fan-in factor")
    if engine is not None and (not (engine / "engine.json").is_file() or not (engine / "learned.safetensors").is_file()):
        raise DataError(f"{engine} is not a finished `meta-train --kind learned` folder (engine.json, learned.safetensors)")
    if fan_in_scope not in (None, *FAN_IN_SCOPES) or fan_in_power is not None and not (math.isfinite(fan_in_power) and fan_in_power >= 0):
        raise ConfigError(f"--fan-in-power must be a finite number >= 0 and --fan-in-scope one of {', '.join(FAN_IN_SCOPES)}, "
                          f"got {fan_in_power} and {fan_in_scope!r}")  # fmt: skip
    entry = ship_learned(engine, fan_in_power=fan_in_power, fan_in_scope=fan_in_scope)
    typer.echo(json.dumps({"shipped": "learned.safetensors", "fingerprint": entry["fingerprint"], "fan_in": entry.get("fan_in"),
                           "meta_loss": [entry["meta_evaluation"]["initial_mean"], entry["meta_evaluation"]["final_mean"]]}))  # fmt: skip


@app.command("analyse")
def analyse_command(
    out: Path = typer.Option(Path("runs/lopt-analysis"), help="Folder for the PNGs and the trajectory JSON."),
    task: str = typer.Option("mnist1d", help="Data set to train on."),
    steps: int = typer.Option(512, help="Training steps."),
    base_lr: float = typer.Option(1e-3, help="Opt2Vec base learning rate."),
    weights: str = typer.Option("default", help="'default' (shipped) or a safetensors path."),
    data_dir: Optional[str] = typer.Option(None, help="Folder with the MNIST files."),
    seed: int = typer.Option(0, help="Seed of the weights and batches."),
) -> None:
    """Plot Opt2Vec's embedding trajectory (PCA, by phase) and its learned lr/momentum next to the loss."""
    from metalearner.atomic import writable_folder, write_json
    from metalearner.lopt.analysis import plot_embedding, plot_schedule, record_run
    from metalearner.errors import ConfigError
    from metalearner.tasks import ModelConfig, TaskConfig, make_task

    if steps < 48 or not base_lr > 0:  # Opt2Vec observes every 16 steps: fewer than three embeddings draw no trajectory
        raise ConfigError(f"--steps must be >= 48 (three of Opt2Vec's observations) and --base-lr > 0, got {steps} and {base_lr}")
    writable_folder(out)
    t = make_task(TaskConfig(dataset=task, model=ModelConfig(depth=2, width=128)), data_dir=data_dir)
    traj = record_run(t, "opt2vec", lr=base_lr, steps=steps, seed=seed, options={"weights": weights})
    plot_embedding(traj, out / "embedding.png")
    plot_schedule(traj, out / "schedule.png")
    write_json(out / "trajectory.json", {k: v.tolist() for k, v in traj.items()})
    typer.echo(json.dumps({"out": str(out), "final_loss": float(traj["loss"][-1]), "lr_range": [float(traj["lr"].min()), float(traj["lr"].max())]}))


if __name__ == "__main__":
    app()
