"""Which learning rate does each population of the meta-training family want?

Plain Schedule-Free AdamW (the untrained ``learned_sf`` kernel: zero policy weights, scale 1)
on every population of the default task family (``lopt.engine.TASK_FAMILY``), one task per
population (seed 0, input scale 1), all lrs side by side as one batched population, scored
by the meta-objective itself (the episode's summed meta-loss terms: area under the log
validation-loss curve plus its final value; lower is better) at horizons of 1 and 4 epochs.
A family whose populations all want a high lr teaches a policy to raise any lr; the
benchmark's MNIST MLPs want 5e-3 to 1e-2. One seed: a scan, not a tuned figure.

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


def scan(population: PopulationConfig, horizons: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """Meta-loss of plain Schedule-Free AdamW at each lr, one task per horizon (in epochs)."""
    lopt = EngineConfig().lopt()
    step = PopulationStep(replace(population, input_scales=(1.0,)), lopt)
    zero = torch.zeros(len(LRS), lopt.init_theta(seed=0).numel())
    out = {}
    for epochs in horizons:
        horizon = step.horizon_steps(epochs)
        state = step.init_step_state(torch.zeros(len(LRS), dtype=torch.long), key=0, horizon=horizon)
        _, unrolled = step.unroll_step(zero, replace(state, base_lr=torch.tensor(LRS)), horizon)
        out[f"{epochs:g}_epochs"] = {f"{lr:g}": round(j, 4) for lr, j in zip(LRS, unrolled.loss.sum(1).tolist())}
    return out


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
    scans = {name(p): scan(p, horizons) for p in family}
    best = {pop: {h: min(s, key=s.get) for h, s in by_h.items()} for pop, by_h in scans.items()}
    for pop, b in best.items():
        print(pop, b, flush=True)
    finish("family_lr_scan", {"best_lr": best}, {"lrs": LRS, "meta_loss": scans}, quick=args.quick)


if __name__ == "__main__":
    main()
