"""``learned_sf``'s design, one factor at a time: per-tensor vs one global multiplier, and a
Schedule-Free vs an Adam base (the issue's sweep asks for both; Opt2Vec's own sweep is
``opt2vec_sweep.py``).

Each variant is the shipped recipe (``EngineConfig()``: the task family, 500 outer steps,
seed 0) with one field changed, meta-trained by the engine (resumable in
``benchmarks/.cache/learned_sf_ablation/NAME``; the shipped variant is the default command, so
its weights are the shipped ones bit for bit). Each is scored four ways:

- the meta-objective on the engine's fixed evaluation tasks, before (the plain base) and
  after meta-training (lower is better), and the meta-training's wall time;
- ``learned_dev.py``'s six dev tasks (mean final validation accuracy and mean area under the
  validation-accuracy curve, base lrs 1e-3, 2.5e-3 and 1e-2);
- epochs to target, one 10-epoch-budget run per seed, 3 seeds, at the variant's own default lr
  (Schedule-Free's 2.5e-3, Adam's 1e-3), 4 evaluations per epoch, on the ``dev`` suite's four
  cells (targets: Adam 1e-3's 10-epoch median there) and on one benchmark cell,
  ``mnist/mlp-2x256-relu`` (the headline suite's target), as ``opt2vec_sweep.py`` does: that
  cell is thereby looked at for this choice.

A variant would replace the shipped weights only by the rule of ``learned_dev.py`` (both
six-task means at least the shipped weights', and its dev-suite figures at least theirs),
fixed before the variants ran.

Since the twenty-first attempt (docs/meta_training.md) ``EngineConfig()`` carries the shipped
input-layer fan-in factor, so every variant's weights carry it too: it leaves meta-training as
it was and acts on the 784-input cells (the committed results were made before it, without).

    python benchmarks/learned_sf_ablation.py --quick   # tiny variants (about a minute), prints JSON
    python benchmarks/learned_sf_ablation.py           # ~90 min from scratch (three meta-trainings), minutes when cached
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import replace
from pathlib import Path

from _common import ROOT, default_data_dir, finish, median, slug
from learned_dev import DEV, LRS, evaluate_weights
from metalearner.atomic import write_json
from metalearner.bench.metrics import epochs_to_target
from metalearner.bench.protocol import get_suite
from metalearner.bench.runner import train_once
from metalearner.lopt.engine import WEIGHTS, EngineConfig, run
from metalearner.lopt.learned import DEFAULT_LR
from metalearner.lopt.truncation import PopulationConfig

VARIANTS: dict[str, dict[str, str]] = {  # name -> the EngineConfig fields it changes
    "shipped (per tensor, Schedule-Free base)": {},
    "one global multiplier": {"scales": "global"},
    "Adam base": {"base": "adam"},
}
CELL = "mnist/mlp-2x256-relu"
QUICK = dict(outer_steps=2, pairs=2, truncation=16, history_length=2, hidden_dim=4, embedding_dim=4, observe_every=4, eval_members=2,
             populations=(PopulationConfig(dataset="digits", n_train=600, depth=1, width=16, batch_size=32, base_lrs=(2.5e-3,),
                                           input_scales=(1.0,), horizon_epochs=(0.5, 1.0)),))  # fmt: skip


def cells(quick: bool, data_dir: str | None) -> dict[str, tuple[dict, float]]:
    """``name -> (task, target)``: the dev suite's cells (targets from its Adam runs, cached
    with ``learned_dev.py --ttt``'s) and the benchmark cell (the committed headline target)."""
    if quick:
        return {"digits/mlp-quick": ({"dataset": "digits", "model": {"depth": 1, "width": 16}, "batch_size": 32}, 0.3)}
    from metalearner.bench import run_suite
    from metalearner.parallel import make_executor

    with make_executor("local", None) as ex:
        dev = run_suite(get_suite("dev"), ROOT / "benchmarks" / ".cache" / "learned_dev_ttt", ex, data_dir=data_dir, progress=False)
    out = {c.name: (c.task.to_dict(), float(dev["cells"][c.name]["target"])) for c in get_suite("dev").cells}
    headline = json.loads((ROOT / "benchmarks" / "results" / "time_to_target_headline.json").read_text())
    cell = next(c for c in get_suite("headline").cells if c.name == CELL)
    out[CELL] = (cell.task.to_dict(), float(headline["summary"]["cells"][CELL]["target"]))
    return out


def run_variant(name: str, overrides: dict, *, quick: bool, seeds: int, data_dir: str | None) -> dict:
    """Meta-train (or resume) one variant, then score it: meta-loss, six dev tasks, epochs to target per cell."""
    out = ROOT / "benchmarks" / ".cache" / ("learned_sf_ablation_quick" if quick else "learned_sf_ablation") / slug(name)
    cfg = replace(EngineConfig(), **overrides, **(QUICK if quick else {}))
    _, record = run(cfg, out)
    weights, lr = str(out / WEIGHTS), DEFAULT_LR[cfg.base]
    dev = evaluate_weights(weights, DEV[1:2] if quick else DEV, LRS[1:2] if quick else LRS, data_dir)
    ttt: dict[str, list[float]] = {}
    for cell, (task, target) in cells(quick, data_dir).items():
        ttt[cell] = []
        for seed in range(seeds):
            cached = out / f"{cell.replace('/', '_')}_seed{seed}.json"
            if cached.exists():
                result = json.loads(cached.read_text())
            else:
                job = {"task": task, "method": "learned_sf", "lr": lr, "seed": seed, "evals_per_epoch": 4,
                       "options": {"weights": weights}, "data_dir": data_dir}  # fmt: skip
                result = train_once(job, 2.0 if quick else 10.0, target)
                write_json(cached, result)
            ttt[cell].append(epochs_to_target(result["curve"], target))
    ev = record.evaluation
    return {
        "variant": name, "overrides": overrides, "lr": lr,
        "meta_loss_untrained": statistics.mean(ev["initial"]), "meta_loss_trained": statistics.mean(ev["final"]),
        "meta_train_s": record.curve[-1]["elapsed_s"] if record.curve else None,
        "dev_mean_final_acc": dev["mean_final_acc"], "dev_mean_auc": dev["mean_auc"],
        "epochs_to_target": ttt, "median_epochs_to_target": {c: median(v) for c, v in ttt.items()},
    }  # fmt: skip


def _epochs(x: float) -> str:
    """Epochs for the table ("—": not reached)."""
    return "—" if math.isinf(x) else f"{x:.2f}"


def table(rows: list[dict]) -> str:
    """The README's markdown table."""
    names = list(rows[0]["median_epochs_to_target"])
    lines = ["| variant | meta-loss (untrained -> trained) | dev: final acc, AUC | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for r in rows:
        per = [f"{_epochs(r['median_epochs_to_target'][c])} [{', '.join(_epochs(e) for e in r['epochs_to_target'][c])}]" for c in names]
        lines.append(f"| {r['variant']} | {r['meta_loss_untrained']:.3f} -> {r['meta_loss_trained']:.3f} | "
                     f"{r['dev_mean_final_acc']:.4f}, {r['dev_mean_auc']:.4f} | " + " | ".join(per) + " |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    """Every variant in turn; the summary's rule flags; results/learned_sf_ablation.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny variants (about a minute); nothing written to results/")
    ap.add_argument("--data-dir", default=default_data_dir())
    args = ap.parse_args()
    seeds = 1 if args.quick else 3
    rows = []
    for name, overrides in VARIANTS.items():
        rows.append(run_variant(name, overrides, quick=args.quick, seeds=seeds, data_dir=args.data_dir))
        print(json.dumps({k: rows[-1][k] for k in ("variant", "meta_loss_trained", "dev_mean_final_acc", "median_epochs_to_target")}), flush=True)
    print(table(rows))
    shipped = rows[0]
    summary = {
        "seeds": seeds, "rows": [{k: r[k] for k in ("variant", "lr", "meta_loss_untrained", "meta_loss_trained", "dev_mean_final_acc",
                                                    "dev_mean_auc", "median_epochs_to_target")} for r in rows],
        "passes_six_task_rule": {r["variant"]: r["dev_mean_final_acc"] >= shipped["dev_mean_final_acc"] and r["dev_mean_auc"] >= shipped["dev_mean_auc"]
                                 for r in rows[1:]},
    }  # fmt: skip
    finish("learned_sf_ablation", summary, {"table_markdown": table(rows), "rows": rows}, quick=args.quick)


if __name__ == "__main__":
    main()
