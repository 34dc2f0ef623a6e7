"""A small zoo of observed runs and a mirror predictor trained on it, scored on runs it
never saw against simple baselines.

    python examples/zoo_and_mirror.py --out runs/zoo-example
"""

import argparse
from pathlib import Path

from metalearner.mirror import build_dataset, fit_on_dataset, score, split_runs
from metalearner.parallel import make_executor
from metalearner.zoo import SweepSpec, run_sweep, summarize_zoo


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="runs/zoo-example")
    p.add_argument("--workers", type=int, default=0, help="0: in this process")
    args = p.parse_args()
    out = Path(args.out)

    spec = SweepSpec.from_dict({
        "name": "example", "sampling": "grid",
        "space": {"dataset": "digits", "depth": 1, "width": [16, 32], "optimizer": ["sgd", "adam"], "epochs": 3, "batch_size": 64,
                  "eval_every": 5, "seed": [0, 1], "by_optimizer": {"sgd": {"lr": [0.05, 0.3]}, "adam": {"lr": [1e-3, 1e-2]}}},
    })  # fmt: skip
    with make_executor("local", args.workers) as ex:
        run_sweep(spec, out / "zoo", ex, progress=False)  # rerun: finishes what is missing
    runs = summarize_zoo(out / "zoo")
    print(runs[["run_id", "optimizer", "lr", "width", "status", "val_acc"]].to_string(index=False))

    ds = build_dataset(out / "zoo", out / "dataset")
    split = split_runs(ds.runs, "run", seed=0)  # no run on two sides
    model, history = fit_on_dataset(ds, ["smooth_loss"], split, kind="mlp", window=8, hidden=16, layers=1)
    r = score(ds, model, "smooth_loss", split, "test")
    print(f"mirror MAE {r['model']['mae']:.4f} vs best baseline {r['best_baseline']} {r['baselines'][r['best_baseline']]['mae']:.4f} "
          f"(ratio {r['ratio']:.2f}, {r['n_runs']} held-out runs)")


if __name__ == "__main__":  # worker processes import this module
    main()
