"""Which learning rate does each population of the meta-training family want?

Plain Schedule-Free AdamW (the untrained ``learned_sf`` kernel: zero policy weights, scale 1)
on every population of the default task family (``lopt.engine.TASK_FAMILY``), one task per
population (seed 0, input scale 1), all lrs side by side as one batched population, scored
by the meta-objective itself (the episode's summed meta-loss terms: area under the log
validation-loss curve plus its final value; lower is better) at horizons of 1 and 4 epochs.
A family whose populations all want a high lr teaches a policy to raise any lr; the
benchmark's MNIST MLPs want 5e-3 to 1e-2. One seed: a scan, not a tuned figure.

Beside each meta-loss: the mean of the policy's ``motion_cos`` feature over the episode's
observations and the tensors (the cosine between a tensor's gradient and the way its weights
have been moving: clearly negative means the lr is below what the task wants), so that one
can see whether the feature tells an lr below a population's best from one at or above it.

    python benchmarks/family_lr_scan.py --quick   # two populations, 1 epoch (seconds)
    python benchmarks/family_lr_scan.py           # every population: results/family_lr_scan.json
    python benchmarks/family_lr_scan.py --only '{"dataset": "synthetic", "n_train": 20000, "data_options": [["n_features", 512], ["n_classes", 10]], "width": 64}'
                                                  # candidate populations instead (PopulationConfig fields; nothing written)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from _common import finish
from metalearner.errors import MetalearnerError
from metalearner.lopt.engine import TASK_FAMILY, EngineConfig
from metalearner.lopt.truncation import PopulationConfig, PopulationStep

LRS = (3e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 4e-2, 8e-2)


def name(p: PopulationConfig) -> str:
    options = "".join(f"-{k}{v}" for k, v in p.data_options)
    return f"{p.dataset}{options}-n{p.n_train}/{p.family}-{p.depth}x{p.width}-{p.activation}-b{p.batch_size}"


def scan(population: PopulationConfig, horizons: tuple[float, ...]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Meta-loss of plain Schedule-Free AdamW at each lr, one task per horizon (in epochs),
    and the mean ``motion_cos`` it observed."""
    lopt = replace(EngineConfig(), fan_in_power=0.0).lopt()  # plain Schedule-Free, whatever a population's input width
    step = PopulationStep(replace(population, input_scales=(1.0,)), lopt)
    zero = torch.zeros(len(LRS), lopt.init_theta(seed=0).numel())
    column = lopt.config.features.index("motion_cos")
    losses, cosines = {}, {}
    for epochs in horizons:
        horizon = step.horizon_steps(epochs)
        state = step.init_step_state(torch.zeros(len(LRS), dtype=torch.long), key=0, horizon=horizon)
        state, total, seen = replace(state, base_lr=torch.tensor(LRS)), torch.zeros(len(LRS)), []
        for _ in range(horizon // lopt.observe_every):  # one observation per chunk; the last one's episode ends (reset)
            state, unrolled = step.unroll_step(zero, state, lopt.observe_every)
            total += unrolled.loss.sum(1)
            if not bool(unrolled.done.any()):
                seen.append(state.opt.history[:, :, -1, column].mean(1))
        losses[f"{epochs:g}_epochs"] = {f"{lr:g}": round(j, 4) for lr, j in zip(LRS, total.tolist())}
        cosines[f"{epochs:g}_epochs"] = {f"{lr:g}": round(c, 3) for lr, c in zip(LRS, torch.stack(seen).mean(0).tolist())}
    return losses, cosines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two populations, 1 epoch; nothing written")
    ap.add_argument("--only", nargs="+", metavar="JSON", help="scan these populations (PopulationConfig fields) instead; nothing written")
    args = ap.parse_args()
    family, horizons = (TASK_FAMILY[:2], (1.0,)) if args.quick else (TASK_FAMILY, (1.0, 4.0))
    if args.only:
        try:
            family, args.quick = tuple(PopulationConfig(**json.loads(p)) for p in args.only), True
        except (ValueError, TypeError, MetalearnerError) as exc:  # bad JSON, unknown field, invalid value
            ap.error(f"--only takes PopulationConfig fields as a JSON object: {exc}")
    results = {name(p): scan(p, horizons) for p in family}
    scans = {pop: r[0] for pop, r in results.items()}
    best = {pop: {h: min(s, key=s.get) for h, s in by_h.items()} for pop, by_h in scans.items()}
    for pop, b in best.items():
        print(pop, b, {h: list(c.values()) for h, c in results[pop][1].items()}, flush=True)
    finish("family_lr_scan", {"best_lr": best}, {"lrs": LRS, "meta_loss": scans, "motion_cos": {pop: r[1] for pop, r in results.items()}},
           quick=args.quick)  # fmt: skip


if __name__ == "__main__":
    main()
