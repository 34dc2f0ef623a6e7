"""Opt2Vec's configuration sweep: which embedding, history, activation and features to ship.

One factor at a time from the shipped configuration (embedding 64, history 16, gelu, base +
extended features): each variant is meta-trained with the shipped command's settings
(``default_config("opt2vec", ...)``, seed 0, 40 antithetic-ES steps), then scored two ways:

- the meta-objective on the 8 fixed evaluation tasks meta-training scores before and after
  (the same tasks for every variant; lower is better; the untrained policy is plain Adam);
- epochs to target on one benchmark cell, ``mnist/mlp-2x256-relu`` (Adam 1e-3's 10-epoch
  median validation accuracy, the headline suite's target), one run of a 10-epoch budget per
  seed, lr 1e-3, with the bench's own runner (4 evaluations per epoch).

Each variant's meta-training is resumable in ``benchmarks/.cache/opt2vec_sweep/NAME`` (a rerun
continues); its cell runs are cached there too. Global vs per-layer scales and an Adam vs
Schedule-Free base are not Opt2Vec options: those two are the design of ``learned_sf`` (per
tensor, Schedule-Free base), ablated by ``learned_sf_ablation.py``.

    python benchmarks/opt2vec_sweep.py --quick   # two tiny variants (~1 minute), prints JSON
    python benchmarks/opt2vec_sweep.py           # full (~25 minutes on 2 cores): results/opt2vec_sweep.json
    python benchmarks/opt2vec_sweep.py --meta-seed 1 --only "shipped,embedding 128,history 32"
        # another meta-training seed for some variants (~15 minutes): results/opt2vec_sweep_meta1.json

One meta-training per variant cannot tell a better configuration from a luckier run:
``--meta-seed`` meta-trains the variants again from another seed (its own cache), so a
variant's figures can be compared across seeds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import ROOT, default_data_dir, finish, median, slug
from metalearner.atomic import write_json
from metalearner.bench.metrics import epochs_to_target
from metalearner.bench.protocol import get_suite
from metalearner.bench.runner import train_once
from metalearner.lopt.meta_train import default_config, meta_train

VARIANTS: dict[str, dict] = {
    "shipped (embedding 64, history 16, gelu, extended)": {},
    "embedding 16": {"embedding_dim": 16},
    "embedding 128": {"embedding_dim": 128},
    "history 4": {"history_length": 4},
    "history 32": {"history_length": 32},
    "activation tanh": {"activation": "tanh"},
    "activation relu": {"activation": "relu"},
    "base features only": {"extended": False},
}
CELL = "mnist/mlp-2x256-relu"
QUICK = {"outer_steps": 2, "pairs": 1, "unroll_steps": 32, "eval_tasks": 2}


def cell_target(quick: bool) -> tuple[dict, float]:
    """The cell's task and its target (from the committed headline results; quick: a low one)."""
    cell = next(c for c in get_suite("headline").cells if c.name == CELL)
    task = cell.task.to_dict()
    if quick:
        return {**task, "n_train": 2000}, 0.5
    headline = json.loads((ROOT / "benchmarks" / "results" / "time_to_target_headline.json").read_text())
    return task, float(headline["summary"]["cells"][CELL]["target"])


def run_variant(name: str, overrides: dict, *, quick: bool, seeds: int, epochs: float, data_dir: str | None, workers: int,
                meta_seed: int = 0) -> dict:  # fmt: skip
    cache = ("opt2vec_sweep_quick" if quick else "opt2vec_sweep") + (f"_meta{meta_seed}" if meta_seed else "")
    out = ROOT / "benchmarks" / ".cache" / cache / slug(name)
    cfg = default_config("opt2vec", **overrides, **(QUICK if quick else {}), seed=meta_seed)
    weights, state = meta_train(cfg, out, workers=workers, progress=False)
    task, target = cell_target(quick)
    epochs_to = []
    for seed in range(seeds):
        cached = out / f"cell_seed{seed}.json"
        if cached.exists():
            run = json.loads(cached.read_text())
        else:
            job = {"task": task, "method": "opt2vec", "lr": 1e-3, "seed": seed, "evals_per_epoch": 4,
                   "options": {"weights": str(out / "opt2vec.safetensors"), "use_extended_features": cfg.extended},
                   "data_dir": data_dir}  # fmt: skip
            run = train_once(job, epochs, target)
            write_json(cached, run)
        epochs_to.append(epochs_to_target(run["curve"], target))
    ev = state.evaluation
    return {
        "variant": name, "overrides": overrides, "policy_params": weights.n_params,
        "meta_loss_untrained": ev["initial_mean"], "meta_loss_trained": ev["final_mean"],
        "meta_train_s": state.curve[-1]["elapsed_s"] if state.curve else None,
        "epochs_to_target": epochs_to, "median_epochs_to_target": median(epochs_to),
        "reached": sum(e < math.inf for e in epochs_to), "target": target,
    }  # fmt: skip


def table(rows: list[dict]) -> str:
    lines = ["| variant | policy params | meta-loss (untrained = Adam -> trained) | epochs to target, median [per seed] |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        per = ", ".join("—" if math.isinf(e) else f"{e:g}" for e in r["epochs_to_target"])
        med = "—" if math.isinf(r["median_epochs_to_target"]) else f"{r['median_epochs_to_target']:g}"
        lines.append(f"| {r['variant']} | {r['policy_params']} | {r['meta_loss_untrained']:.3f} -> {r['meta_loss_trained']:.3f} | {med} [{per}] |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="two tiny variants (about a minute); nothing written to results/")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--seeds", type=int, default=None, help="cell runs per variant (default 3; quick 1)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--meta-seed", type=int, default=0, help="the variants' meta-training seed (default 0, the committed sweep's)")
    ap.add_argument("--only", default=None, help="comma-separated variant names, each a prefix of one (default: all)")
    args = ap.parse_args()
    variants = dict(list(VARIANTS.items())[:2]) if args.quick else VARIANTS
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        chosen = {n: o for n, o in VARIANTS.items() if any(n.startswith(w) for w in wanted)}
        if len(chosen) != len(wanted):
            raise SystemExit(f"--only: each name must start exactly one variant's; variants: {'; '.join(VARIANTS)}")
        variants = chosen
    seeds = args.seeds or (1 if args.quick else 3)
    epochs = 0.5 if args.quick else 10.0
    rows = []
    for name, overrides in variants.items():
        rows.append(run_variant(name, overrides, quick=args.quick, seeds=seeds, epochs=epochs, data_dir=args.data_dir, workers=args.workers,
                                meta_seed=args.meta_seed))  # fmt: skip
        print(json.dumps({k: rows[-1][k] for k in ("variant", "meta_loss_trained", "median_epochs_to_target")}), flush=True)
    print(table(rows))
    best = min(rows, key=lambda r: (r["median_epochs_to_target"], r["meta_loss_trained"]))
    summary = {
        "cell": CELL, "target": rows[0]["target"], "seeds": seeds, "budget_epochs": epochs, "meta_seed": args.meta_seed,
        "rows": [{k: r[k] for k in ("variant", "policy_params", "meta_loss_untrained", "meta_loss_trained", "median_epochs_to_target", "reached")} for r in rows],
        "best_by_epochs_then_meta_loss": best["variant"],
        "shipped_is_best": best["variant"] == next(iter(VARIANTS)),
    }  # fmt: skip
    finish("opt2vec_sweep" + (f"_meta{args.meta_seed}" if args.meta_seed else ""), summary, {"table_markdown": table(rows), "rows": rows}, quick=args.quick)


if __name__ == "__main__":
    main()
