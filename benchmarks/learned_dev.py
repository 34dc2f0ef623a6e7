"""Dev tasks for ``learned_sf`` weights: compare candidate weights before shipping, away from the benchmark.

Six networks that are not benchmark cells (MNIST-1D MLP 2x256 relu, digits MLP 3x32 tanh,
synthetic MLP 2x64 relu, MNIST 784-512-10 tanh: MNIST is a benchmark data set, this network is
not a cell; and, since the seventh meta-training, whose MLP-only dev set could not see that it
was slower on the benchmark's CNN and GRU cells, a digits CNN 2x16 and an MNIST-1D GRU 1x32),
each from base lrs 1e-3, 2.5e-3 and 1e-2, seed 0, with ``fit`` (4 evaluations per epoch).
For each weights file: every run's final validation accuracy, the mean of its
validation-accuracy curve (an area under it: getting there early counts) and the learned
multipliers at the end; then the means over all runs. The shipping rule used in
``docs/meta_training.md``: a candidate replaces the shipped weights only if both means are at
least the shipped weights' (``beats_shipped``) and, with ``--ttt``, so is its profile score on
the dev suite (``ttt_at_least_shipped``). ``ttt_vs_shipped`` says, cell by cell, whether a
candidate is faster or slower than the shipped weights (a tie within a quarter epoch, about
what float rounding alone moves a median): informational, not part of the rule, but it is the
part of the dev check that tracked the benchmark (``docs/meta_training.md``).

    python benchmarks/learned_dev.py --quick                        # one task, one lr, shipped weights (seconds)
    python benchmarks/learned_dev.py runs/meta/learned/learned.safetensors   # shipped vs a candidate
    python benchmarks/learned_dev.py OTHER --tag NAME    # writes results/learned_dev_NAME.json instead
    python benchmarks/learned_dev.py OTHER --ttt         # and time to target on the dev suite (~10 min the first time, 2 workers)

``--ttt`` adds what the six tasks cannot see (the twelfth meta-training passed them and then
stalled short of the target on the benchmark's 60,000-image MLPs): the benchmark's own
protocol (``metalearner bench``: Adam's 10-epoch accuracy as the target, 3 seeds) on the
``dev`` suite (three of the networks above: the MNIST net, the digits CNN, the GRU; and a
Fashion-MNIST MLP 3x128 SiLU on 60,000 images), for Adam,
Schedule-Free AdamW and ``learned_sf`` with each weights file; it reports ``learned_sf``'s
median epochs to target per cell (``null``: not reached in 10 epochs) and its self-tuning
profile score. Jobs are cached in ``benchmarks/.cache/learned_dev_ttt``, so a new candidate
only runs its own.
"""

from __future__ import annotations

import argparse
import math
import statistics

from _common import default_data_dir, finish
from metalearner.lopt.learned import LearnedOptimizer
from metalearner.tasks import ModelConfig, TaskConfig, make_task
from metalearner.train.fit import fit

DEV = (  # dataset, family, depth, width, activation, n_train, batch, epochs
    ("mnist1d", "mlp", 2, 256, "relu", None, 128, 4),
    ("digits", "mlp", 3, 32, "tanh", None, 32, 6),
    ("synthetic", "mlp", 2, 64, "relu", 8000, 128, 3),
    ("mnist", "mlp", 1, 512, "tanh", None, 128, 2),
    ("digits", "cnn", 2, 16, "relu", None, 32, 6),
    ("mnist1d", "rnn", 1, 32, "tanh", None, 128, 4),
)
LRS = (1e-3, 2.5e-3, 1e-2)


def evaluate_weights(weights: str, dev, lrs, data_dir: str | None) -> dict:
    runs = []
    for ds, family, depth, width, act, n_train, batch, epochs in dev:
        model_cfg = ModelConfig(family=family, depth=depth, width=width, activation=act)
        cfg = TaskConfig(dataset=ds, model=model_cfg, n_train=n_train, batch_size=batch)
        task = make_task(cfg, data_dir=data_dir)
        per_epoch = max(1, len(task.data.x_train) // batch)
        for lr in lrs:
            model = task.build_model(seed=0)
            opt = LearnedOptimizer(model.parameters(), lr=lr, weights=weights)
            res = fit(model, opt, task, epochs=epochs, eval_every=max(1, per_epoch // 4), seed=0, test=False)
            accs = [h["val_acc"] for h in res.history]
            runs.append({"task": f"{ds}/{family}-{depth}x{width}-{act}", "lr": lr, "final_acc": accs[-1], "auc": statistics.mean(accs),
                         "multipliers": [round(s, 2) for s in opt.lr_scales().tolist()]})  # fmt: skip
            print(runs[-1], flush=True)
    return {"mean_final_acc": statistics.mean(r["final_acc"] for r in runs), "mean_auc": statistics.mean(r["auc"] for r in runs), "runs": runs}


def time_to_target(weights: str, data_dir: str | None) -> dict:
    """``learned_sf`` with ``weights`` on the ``dev`` suite: median epochs to target per cell
    and the self-tuning profile score (against Adam and Schedule-Free, whose jobs are shared)."""
    from _common import ROOT
    from metalearner.bench import get_suite, run_suite
    from metalearner.parallel import make_executor

    with make_executor("local", None) as ex:
        res = run_suite(get_suite("dev"), ROOT / "benchmarks" / ".cache" / "learned_dev_ttt", ex, data_dir=data_dir, progress=False,
                        weights=None if weights == "default" else {"learned_sf": weights})  # fmt: skip
    epochs = {c: v["rulesets"]["self_tuning"]["learned_sf"]["summary"]["epochs_to_target"] for c, v in res["cells"].items()}
    baselines = {c: {m: e["summary"]["epochs_to_target"] for m, e in v["rulesets"]["self_tuning"].items() if m != "learned_sf"}
                 for c, v in res["cells"].items()}  # fmt: skip
    return {"epochs_to_target": epochs, "profile_score": res["profile_scores"]["self_tuning"]["learned_sf"], "baselines": baselines}


TIE_EPOCHS = 0.25  # a median moved this much by float rounding alone (docs/meta_training.md)


def versus(candidate: dict[str, float | None], shipped: dict[str, float | None]) -> dict[str, str]:
    """Cell by cell, ``"faster"``, ``"slower"`` or ``"tie"`` (``None``: not reached, slower than any figure)."""
    def epochs(x: float | None) -> float:
        return math.inf if x is None else x

    out = {}
    for cell, e in candidate.items():
        a, b = epochs(e), epochs(shipped[cell])
        out[cell] = "tie" if a == b or abs(a - b) <= TIE_EPOCHS else "faster" if a < b else "slower"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", nargs="*", help="weights files to compare with the shipped ones")
    ap.add_argument("--quick", action="store_true", help="one task, one lr (seconds); nothing written")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--tag", default=None, help="write results/learned_dev_TAG.json (keeps learned_dev.json)")
    ap.add_argument("--ttt", action="store_true", help="also time to target on the dev suite (see above)")
    args = ap.parse_args()
    if args.quick and args.ttt:
        ap.error("--ttt runs the dev suite (about 10 minutes the first time); it has no --quick form")
    dev, lrs = (DEV[1:2], LRS[1:2]) if args.quick else (DEV, LRS)
    results = {w: evaluate_weights(w, dev, lrs, args.data_dir) for w in ("default", *args.candidates)}
    shipped = results["default"]
    summary = {
        name: {"mean_final_acc": round(r["mean_final_acc"], 4), "mean_auc": round(r["mean_auc"], 4),
               "beats_shipped": name != "default" and r["mean_final_acc"] >= shipped["mean_final_acc"] and r["mean_auc"] >= shipped["mean_auc"]}
        for name, r in results.items()
    }  # fmt: skip
    if args.ttt:
        for name, r in results.items():
            r["ttt"] = time_to_target(name, args.data_dir)
            summary[name].update(ttt_epochs=r["ttt"]["epochs_to_target"], ttt_profile_score=round(r["ttt"]["profile_score"], 4))
        for name in args.candidates:
            summary[name]["ttt_at_least_shipped"] = summary[name]["ttt_profile_score"] >= summary["default"]["ttt_profile_score"]
            summary[name]["ttt_vs_shipped"] = versus(summary[name]["ttt_epochs"], summary["default"]["ttt_epochs"])
    finish("learned_dev" + (f"_{args.tag}" if args.tag else ""), summary, {"results": results}, quick=args.quick)


if __name__ == "__main__":
    main()
