"""Held-out evaluation of frozen learned optimizers and their model card (JSON + Markdown)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from metalearner.atomic import atomic_path, read_json, writable_folder, write_json
from metalearner.errors import DataError
from metalearner.lopt.meta_train import summarise_tasks
from metalearner.lopt.policy import PRETRAINED, PolicyWeights, fan_in_metadata

HELD_OUT = "mnist, MLP 784-256-256-10 relu (never seen in meta-training), batch 128"


def evaluate_held_out(opt2vec: str | Path, controller: str | Path, *, data_dir: str | None, epochs: float,
                      seeds: int) -> dict[str, Any]:  # fmt: skip
    """Adam 1e-3 against Opt2Vec (lr 1e-3) and Adam 1e-3 + controller, with the weights files
    ``opt2vec`` and ``controller`` frozen, through the registry and ``train_run``."""
    from metalearner.tasks import ModelConfig, TaskConfig, make_task
    from metalearner.train import RunConfig, train_run

    task = make_task(TaskConfig(dataset="mnist", model=ModelConfig(depth=2, width=256)), data_dir=data_dir)
    methods = {"adam": {}, "opt2vec": {"weights": str(opt2vec)}, "adam+controller": {"weights": str(controller)}}
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    steps = 0
    for seed in range(seeds):
        for name, options in methods.items():
            cfg = RunConfig(task=task.config, optimizer=name, lr=1e-3, epochs=epochs, seed=seed, options=options)
            steps = cfg.budget(task).total
            cfg = dataclasses.replace(cfg, eval_every=max(1, steps // 8))
            t0 = time.perf_counter()
            result = train_run(cfg, task=task, probe=False)
            runs[name].append({"seed": seed, "seconds": time.perf_counter() - t0, **result.final,
                               "val_acc_curve": [round(h["val_acc"], 4) for h in result.history]})  # fmt: skip
    summary = {
        name: {k: float(np.mean([r[k] for r in rs])) for k in ("val_loss", "val_acc", "test_loss", "test_acc") if k in rs[0]}
        for name, rs in runs.items()
    }
    return {"task": HELD_OUT, "epochs": epochs, "steps": steps, "seeds": seeds, "summary": summary, "runs": runs}


def read_card(path: Path) -> dict[str, Any]:
    """A ``MODEL_CARD.json``; a file that is not one is a one-line :class:`DataError`."""
    card = read_json(path)
    if not (isinstance(card, dict) and isinstance(card.get("optimizers"), dict)):
        raise DataError(f"{path} is not a model card (no 'optimizers' entry)")
    return card


def learned_entry(engine_dir: Path) -> dict[str, Any]:
    """The card entry of an engine-trained optimizer (``meta-train --kind learned``): its
    command, config, what it saw (in the keys the benchmark's exposure check reads), curve."""
    from metalearner.lopt.engine import WEIGHTS

    folder = Path(engine_dir)
    state = read_json(folder / "engine.json")
    cfg, curve, ev = state["config"], state["curve"], state["evaluation"]
    pops = cfg["populations"]
    exposure = {
        "datasets": sorted({p["dataset"] for p in pops}), "depths": sorted({p["depth"] for p in pops}),
        "widths": sorted({p["width"] for p in pops}), "activations": sorted({p["activation"] for p in pops}),
        "families": sorted({p["family"] for p in pops}), "data_seeds": sorted({p["data_seed"] for p in pops}),
        "n_train": sorted({p["n_train"] for p in pops}), "unroll_steps": cfg["truncation"],
        "architectures": [[p["family"], p["depth"], p["width"], p["activation"]] for p in pops],
    }  # fmt: skip
    return {
        "command": f"metalearner meta-train --kind learned --out {folder} --seed {cfg['seed']}"
                   + "".join(f" --{k} {cfg[k]}" for k, default in (("prior", "none"), ("base", "schedulefree"), ("scales", "per_tensor"))
                             if cfg.get(k, default) != default),
        "config": {**cfg, **exposure}, "n_params": PolicyWeights.load(folder / WEIGHTS).n_params, "curve": curve,
        "wall_time_s": curve[-1]["elapsed_s"] if curve else 0.0,
        "tasks_seen": [f"{p['dataset']} ({p['n_train']} examples{''.join(f', {k} {v}' for k, v in p.get('data_options', []))}): "
                       f"{p['family']} {p['depth']}x{p['width']} {p['activation']}, batch {p['batch_size']}" for p in pops],
        "meta_evaluation": {**ev, "initial_mean": float(np.mean(ev["initial"])), "final_mean": float(np.mean(ev["final"]))},
    }  # fmt: skip


def ship_learned(engine_dir: Path | None, *, fan_in_power: float | None = None, fan_in_scope: str | None = None,
                 pretrained: Path = PRETRAINED) -> dict[str, Any]:  # fmt: skip
    """Copy an engine run's weights into ``metalearner/lopt/pretrained/learned.safetensors``
    and record it in the model card beside the others. ``fan_in_power`` (not None) sets the
    shipped weights' fixed fan-in lr factor (0: none) and ``fan_in_scope`` the tensors it scales
    (None: the weights' own), in their metadata (their tensors unchanged; the card says it was
    set at shipping); ``engine_dir`` None: only that, on the weights shipped now."""
    from metalearner.lopt.engine import WEIGHTS

    card = read_card(pretrained / "MODEL_CARD.json")
    target = pretrained / "learned.safetensors"
    weights = PolicyWeights.load(target if engine_dir is None else Path(engine_dir) / WEIGHTS)
    if engine_dir is not None:
        card["optimizers"]["learned"] = learned_entry(engine_dir)
    entry = card["optimizers"]["learned"]
    if fan_in_power is not None:
        scope = fan_in_scope or weights.fan_in_scope()
        for key in ("fan_in_power", "fan_in_scope"):
            weights.metadata.pop(key, None)
        weights.metadata.update(fan_in_metadata(fan_in_power, scope))
    power, scope = weights.fan_in_power(), weights.fan_in_scope()  # a bad value is refused here, before anything is written
    entry.pop("fan_in", None)
    if power:  # set at shipping: the run's config may say otherwise
        entry["fan_in"] = {"power": power, "scope": scope, **({"set_at_shipping": True} if fan_in_power is not None else {})}
    entry["fingerprint"] = weights.fingerprint()
    weights.save(target)
    write_json(pretrained / "MODEL_CARD.json", card)
    with atomic_path(pretrained / "MODEL_CARD.md") as tmp:
        tmp.write_text(_markdown(card))
    return entry


START = {"none": "untrained (= base optimizer)", "integrator": "at the start (the integrator prior, not trained)"}  # EngineConfig.prior


def _markdown(card: dict[str, Any]) -> str:
    lines = ["# Pretrained learned optimizers: model card", "",
             "Produced by this project's own commands (exact lines below), frozen, shipped as safetensors.", ""]  # fmt: skip
    for kind, part in card["optimizers"].items():
        ev = part["meta_evaluation"]
        if kind == "learned":
            c = part["config"]
            lines += [
                f"## {kind} (`learned_sf`: {c['base']} base, {'one lr multiplier per network' if c.get('scales') == 'global' else 'per-tensor lr multipliers'}, "
                "the batched PES engine)", "",
                f"- command: `{part['command']}`",
                f"- seed {c['seed']}, {part['n_params']} parameters, {c['outer_steps']} outer steps (torch Adam, lr {c['outer_lr']}) "
                f"of PES with {c['pairs']} antithetic pairs per population and truncations of {c['truncation']} steps, "
                f"outer loop {part['wall_time_s']:.0f} s",
                f"- populations: {'; '.join(part['tasks_seen'])}",
                f"- meta-loss (validation AUC + final, log ratio to the initial loss, lower is better) on "
                f"{c['eval_members']} fixed tasks of {c['eval_epochs']} epochs per population: {START.get(c.get('prior', 'none'), 'at the start')} "
                f"{ev['initial_mean']:.3f} -> trained {ev['final_mean']:.3f} (per population: "
                + ", ".join(f"{a:.3f} -> {b:.3f}" for a, b in zip(ev["initial"], ev["final"])) + ")",
            ]  # fmt: skip
            if "fan_in" in part:
                f = part["fan_in"]
                where = ("the input layer (`LearnedOptimizer.input_layer`: the deepest weight in the first step's loss graph, "
                         "else the first tensor of two or more dimensions that is not a (1, ...) token; once any group is "
                         "marked, the groups marked input_layer=True)") if f["scope"] == "input" else "every tensor of two or more dimensions"
                lines.append(f"- a fixed lr factor, not learned: min(1, (128 / fan-in)^{f['power']:g}) on {where} (`fan_in_power` "
                             f"{f['power']:g}, `fan_in_scope` {f['scope']} in the weights' metadata"
                             + (", set at shipping: `metalearner lopt ship-learned --fan-in-power ...`" if f.get("set_at_shipping") else "")
                             + "; docs/meta_training.md)")  # fmt: skip
            if "fingerprint" in part:
                lines.append(f"- fingerprint `{part['fingerprint']}`")
            lines.append("")
            continue
        curve = ", ".join(f"{c['meta_loss']:.2f}" for c in part["curve"])
        lines += [
            f"## {kind}", "",
            f"- command: `{part['command']}`",
            f"- seed {part['config']['seed']}, {part['n_params']} parameters, {part['config']['outer_steps']} ES steps x "
            f"{part['config']['pairs']} antithetic pairs, unrolls of {part['config']['unroll_steps']} steps, "
            f"wall time {part['wall_time_s']:.0f} s",
            f"- tasks seen: {json.dumps(part['tasks_seen'])}",
            f"- meta-loss (mean log loss ratio, lower is better) on {len(ev['initial'])} fixed evaluation tasks: "
            f"untrained (= base optimizer) {ev['initial_mean']:.3f} -> trained {ev['final_mean']:.3f}",
            f"- per-step population meta-loss (noisy: different tasks each step): {curve}", "",
        ]  # fmt: skip
    h = card["evaluation"]
    lines += [f"## Held-out evaluation ({h['task']}, {h['epochs']} epochs, {h['seeds']} seeds, weights frozen)", "",
              "| method | val loss | val acc | test acc |", "|---|---|---|---|"]  # fmt: skip
    for name, s in h["summary"].items():
        lines.append(f"| {name} | {s['val_loss']:.4f} | {s['val_acc']:.4f} | {s.get('test_acc', float('nan')):.4f} |")
    lines += ["", f"card command: `{card['command']}`", ""]
    return "\n".join(lines)


def write_card(opt2vec_dir: Path, controller_dir: Path, *, data_dir: str | None, epochs: float, seeds: int, ship: bool,
               out: Path | None, command: str) -> dict[str, Any]:  # fmt: skip
    target = writable_folder(PRETRAINED if ship else Path(out or opt2vec_dir))  # checked before the evaluation
    kept = read_card(target / "MODEL_CARD.json")["optimizers"] if (target / "MODEL_CARD.json").exists() else {}
    parts, weights = {}, {}
    for kind, folder in (("opt2vec", Path(opt2vec_dir)), ("controller", Path(controller_dir))):
        state = read_json(folder / "state.json")
        weights[kind] = PolicyWeights.load(folder / f"{kind}.safetensors")
        curve = state["curve"]
        parts[kind] = {
            "command": f"metalearner meta-train --kind {kind} --out {folder} --seed {state['config']['seed']}",
            "config": state["config"], "n_params": weights[kind].n_params, "curve": curve,
            "wall_time_s": curve[-1].get("elapsed_s", float("nan")) if curve else 0.0,
            "tasks_seen": summarise_tasks(state["tasks_seen"]),
            "meta_evaluation": state["evaluation"],
        }  # fmt: skip
    evaluation = evaluate_held_out(Path(opt2vec_dir) / "opt2vec.safetensors", Path(controller_dir) / "controller.safetensors",
                                   data_dir=data_dir, epochs=epochs, seeds=seeds)  # fmt: skip
    parts.update({kind: part for kind, part in kept.items() if kind not in parts})  # keep the entries this command does not make (the engine's)
    card = {"command": command, "optimizers": parts, "evaluation": evaluation}
    if ship:
        for kind, folder in (("opt2vec", Path(opt2vec_dir)), ("controller", Path(controller_dir))):
            shutil.copyfile(folder / f"{kind}.safetensors", target / f"{kind}.safetensors")
    write_json(target / "MODEL_CARD.json", card)
    with atomic_path(target / "MODEL_CARD.md") as tmp:
        tmp.write_text(_markdown(card))
    return card
