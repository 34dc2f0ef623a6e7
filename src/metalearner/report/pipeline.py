"""The report of ``metalearner run``: one ``report.html`` (figures embedded) and ``report.md``,
rebuilt from the artifacts a pipeline folder holds, training nothing.

Sections: what ran; the zoo (curves by optimizer, diverged runs marked, the probe's gradient
norm and update ratio); the mirror (held-out predictions, baselines, early-stopping
savings); the learned optimizer (lr and momentum next to the loss, the embedding map); the
benchmark (report/bench.py's figures and tables); the verdict. Figures reuse
:mod:`metalearner.report.bench`, :mod:`metalearner.lopt.analysis` and
:func:`metalearner.mirror.pipeline.plot_heldout`; the blocks render through report/bench.py's
``to_markdown`` / ``to_html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from metalearner.atomic import atomic_path, read_json
from metalearner.errors import DataError

STAGE_TITLES = {"zoo": "zoo of observed runs", "dataset": "dataset of trajectories", "mirror": "mirror (predictors of training)",
                "meta_train": "learned optimizer", "bench": "benchmark (time to target)", "report": "report"}  # fmt: skip


def _record(out: Path, name: str) -> dict[str, Any] | None:
    """A stage's ``stage.json`` (None when it has none or it is not an object)."""
    p = out / name / "stage.json"
    if not p.exists():
        return None
    rec = read_json(p)
    return rec if isinstance(rec, dict) else None


def _stage_json(path: Path, *keys: str) -> dict[str, Any]:
    """A stage's JSON file, which must be an object holding ``keys`` (nested, in order); one
    that is not (written by something else, or cut short) is a one-line :class:`DataError`."""
    obj = rec = read_json(path)
    if not isinstance(rec, dict):
        raise DataError(f"{path} is not what its stage writes (not a JSON object)")
    for depth, key in enumerate(keys, start=1):
        if not isinstance(obj, dict) or key not in obj:
            raise DataError(f"{path} is not what its stage writes (no {'.'.join(keys[:depth])}); run `metalearner run` again into a new folder")
        obj = obj[key]
    return rec


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# -- figures ----------------------------------------------------------------------------


def plot_zoo(zoo: Any, runs: Any, path: Path) -> Path:
    """Training loss (smoothed) and validation accuracy of every run against the epoch,
    coloured by optimizer; a diverged run ends in a red cross."""
    from metalearner.report.curves import smooth

    plt = _plt()
    opts = sorted(runs["optimizer"].dropna().unique())
    colours = {o: plt.get_cmap("tab10")(i % 10) for i, o in enumerate(opts)}
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    top, low = -np.inf, np.inf
    diverged = []
    for rid, df in zoo.groupby("run_id"):
        run = runs.loc[runs["run_id"] == rid].iloc[0]
        c = colours.get(run["optimizer"], "0.5")
        loss = smooth(np.log10(np.clip(df["loss"].to_numpy(float), 1e-8, None)))
        per_epoch = float(df["batch"].max()) + 1
        ep = df["epoch"].to_numpy(float) + (df["batch"].to_numpy(float) + 1) / max(per_epoch, 1)  # epochs done after each step
        a.plot(ep, loss, color=c, lw=0.9, alpha=0.8)
        fin = np.isfinite(loss)
        if fin.any():
            top, low = max(top, loss[fin][0]), min(low, np.nanmin(loss[fin]))
        ev = df["val_acc"].notna().to_numpy()
        b.plot(ep[ev], df["val_acc"].to_numpy(float)[ev], color=c, lw=0.9, alpha=0.8, marker=".", ms=3)
        if run["status"] == "diverged":
            diverged.append(ep[fin][-1] if fin.any() else 0.0)
    # the y range of the runs that train; a diverged run leaves through the top, marked there
    ylim = (low - 0.1 * (top - low + 0.1), top + 0.5 * (top - low + 0.1)) if np.isfinite(top) else None
    if ylim:
        a.set_ylim(*ylim)
        a.scatter(diverged, [ylim[1]] * len(diverged), marker="x", s=60, color="red", zorder=5, clip_on=False)
    for o in opts:
        a.plot([], [], color=colours[o], label=o)
    a.scatter([], [], marker="x", color="red", label="diverged")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (log10, smoothed)")
    a.set_title("training loss of every run (x: diverged)")
    a.legend(title="optimizer", fontsize=8)
    b.set_xlabel("epoch")
    b.set_ylabel("validation accuracy")
    b.set_title("validation accuracy at each evaluation")
    b.set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_probe(zoo: Any, runs: Any, ids: list[str], path: Path) -> Path:
    """What the probe recorded for a few runs: gradient norm and update ratio (|Δθ|/|θ|) per step."""
    from metalearner.report.curves import smooth

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for rid in ids:
        df = zoo[zoo["run_id"] == rid]
        run = runs.loc[runs["run_id"] == rid].iloc[0]
        label = f"{run['optimizer']} lr={run['lr']:.2g} on {run['dataset']} ({run['status']})"
        for ax, col in zip(axes, ("grad_norm", "update_ratio")):
            ax.plot(df["step"], smooth(df[col].to_numpy(float), 0.1), lw=1, label=label)
    for ax, title in zip(axes, ("gradient norm ‖g‖", "update ratio ‖Δθ‖ / ‖θ‖")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(title)
        ax.set_title(title + " (smoothed)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_meta_loss(curve: list[float], path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(range(1, len(curve) + 1), curve, marker="o")
    ax.set_xlabel("outer (ES) step")
    ax.set_ylabel("meta-loss (lower is better)")
    ax.set_title("meta-training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- sections ---------------------------------------------------------------------------


def _zoo_section(out: Path, figs: Path, n_probe: int) -> tuple[list[tuple[str, Any]], list[str]]:
    from metalearner.zoo.summary import load_zoo, summarize_zoo

    bl: list[tuple[str, Any]] = [("h2", "1. The zoo: many small trainings, observed step by step")]
    runs = summarize_zoo(out / "zoo")
    zoo = load_zoo(out / "zoo")
    counts = runs["status"].value_counts().to_dict()
    datasets = ", ".join(sorted(runs["dataset"].dropna().unique()))
    bl.append(("p", f"{len(runs)} neural networks (MLPs) were trained on {datasets} with different optimizers, learning rates, "
                    f"depths and widths; a probe recorded every step (loss, gradient norm, update size, ...). Status: "
                    + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ". Learning rates were drawn from too small to "
                    "too large on purpose: diverged runs are data too."))  # fmt: skip
    bl.append(("img", plot_zoo(zoo, runs, figs / "zoo_curves.png")))
    done = runs[runs["val_acc"].notna()].sort_values("val_acc", ascending=False)
    ids = list(done["run_id"][:1]) + list(done["run_id"][len(done) // 2 : len(done) // 2 + 1])
    div = runs[runs["status"] == "diverged"]
    ids += list(div["run_id"][:1]) if len(div) else list(done["run_id"][-1:])
    ids = list(dict.fromkeys(ids))[:n_probe]
    bl.append(("p", "What the probe sees, for the best run, a middling one and a diverged (or the worst) one: a run that blows "
                    "up shows its gradient norm and update ratio climbing before the loss becomes non-finite."))  # fmt: skip
    bl.append(("img", plot_probe(zoo, runs, ids, figs / "zoo_probe.png")))
    head = ["optimizer", "runs", "diverged", "best val acc", "median val acc"]
    rows = []
    for o, g in runs.groupby("optimizer"):
        acc = g["val_acc"].dropna()
        rows.append([o, str(len(g)), str(int((g["status"] == "diverged").sum())), f"{acc.max():.3f}" if len(acc) else "—",
                     f"{acc.median():.3f}" if len(acc) else "—"])  # fmt: skip
    bl.append(("table", (head, rows)))
    notes = [f"The zoo: {len(runs)} runs, {counts.get('diverged', 0)} diverged."]
    return bl, notes


def _mirror_section(out: Path, figs: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    from metalearner.mirror import Dataset, load_predictor
    from metalearner.mirror.pipeline import plot_heldout

    bl: list[tuple[str, Any]] = [("h2", "2. The mirror: predicting how training will go")]
    scores = _stage_json(out / "mirror" / "scores.json", "scores", "smooth_loss")
    s = scores["scores"]["smooth_loss"]
    split = _stage_json(out / "mirror" / "split.json", "by")
    best = s["best_baseline"]
    bl.append(("p", f"A small network (the mirror) read the probe's recent history of each run and predicted the loss a few "
                    f"steps ahead. It was trained on some runs and is scored here on {s['n_runs']} runs it never saw "
                    f"(split by {split['by']}), against simple forecasts (baselines) such as an exponential moving average."))  # fmt: skip
    ds = Dataset.load(out / "dataset")
    model = load_predictor(out / "mirror" / "smooth_loss")
    bl.append(("img", plot_heldout(ds, model, "smooth_loss", split["split"], figs / "mirror_heldout.png")))
    head = ["predictor", "MAE (log loss)", "RMSE", "R²"]
    rows = [["mirror (ours)", f"{s['model']['mae']:.4f}", f"{s['model']['rmse']:.4f}", f"{s['model']['r2']:.3f}"]]
    for name, m in sorted(s["baselines"].items(), key=lambda kv: kv[1]["mae"]):
        rows.append([f"baseline: {name}", f"{m['mae']:.4f}", f"{m['rmse']:.4f}", f"{m['r2']:.3f}"])
    bl.append(("table", (head, rows)))
    lo, hi = s["ratio_ci95"]
    beats = s["ratio"] < 1 and hi is not None and hi < 1
    mirror_line = (f"The mirror's error is {s['ratio']:.2f}x the best baseline's ({best}; 95% CI [{lo:.2f}, {hi:.2f}] over runs): "
                   + ("it beats the baseline." if beats else "it does NOT clearly beat the simple baseline here."))  # fmt: skip
    bl.append(("p", mirror_line))
    notes = [mirror_line]
    e = scores.get("early_stopping")
    if e:
        line = (f"Early stopping with the mirror's final-accuracy forecast, replayed on the {e['runs']} held-out runs: "
                f"{e['steps_pruned']} of {e['steps_all']} steps ({e['compute_saved']:.2f}x less compute, {e['stopped']} runs stopped early); "
                f"best accuracy found {e['best_acc_pruned']:.3f} against {e['best_acc_all']:.3f} when every run finishes.")  # fmt: skip
        bl.append(("p", line))
        notes.append(line)
    return bl, notes


def _lopt_section(out: Path, figs: Path, rec: dict[str, Any]) -> tuple[list[tuple[str, Any]], list[str]]:
    from metalearner.lopt.analysis import plot_embedding, plot_schedule

    info = rec.get("outputs", {})
    cfg = rec["config"]
    bl: list[tuple[str, Any]] = [("h2", "3. The learned optimizer (Opt2Vec)")]
    if info.get("source") == "train":
        src = (f"These weights were meta-trained by this pipeline: {info['outer_steps']} steps of evolution strategies; "
               f"held-out meta-loss {info['eval_initial']:.3f} before, {info['eval_final']:.3f} after (lower is better). "
               f"The benchmark below runs these weights.")  # fmt: skip
    else:
        src = ("No meta-training in this preset: these are the pretrained weights shipped with metalearner "
               "(meta-trained with `metalearner meta-train`, the default config), and the benchmark below runs them.")
    bl.append(("p", "Opt2Vec is Adam whose learning rate and momentum are set at every step by a small network that reads the "
                    "same training physics the probe records. " + src))  # fmt: skip
    if info.get("curve"):
        bl.append(("img", plot_meta_loss(info["curve"], figs / "meta_loss.png")))
    traj = {k: np.asarray(v, dtype=float) for k, v in _stage_json(out / "meta_train" / "trajectory.json").items()}
    bl.append(("p", f"One run on {info.get('analysis_task', cfg['analysis_task']['dataset'])} ({cfg['analysis_steps']} steps, base lr "
                    f"{cfg['analysis_lr']:g}): the loss, the learning rate it applied and its momentum, step by step."))  # fmt: skip
    plot_schedule(traj, figs / "lopt_schedule.png")
    bl.append(("img", figs / "lopt_schedule.png"))
    if traj["embedding"].size and traj["embedding"].ndim == 2 and len(traj["embedding"]) > 2:
        plot_embedding(traj, figs / "lopt_embedding.png")
        bl.append(("p", "Its internal state (the embedding), projected to 2-D and coloured by the phase of training (first, middle "
                        "and last third): a policy that adapts moves through distinct regions as training goes on."))  # fmt: skip
        bl.append(("img", figs / "lopt_embedding.png"))
    lr = traj["lr"][np.isfinite(traj["lr"])]
    note = (f"The learned optimizer applied learning rates from {lr.min():.2g} to {lr.max():.2g} over its demo run." if len(lr) else "")
    return bl, [note] if note else []


def _bench_section(out: Path, figs: Path) -> tuple[list[tuple[str, Any]], list[str]]:
    from metalearner.bench import load_results
    from metalearner.report.bench import headline_table, plot_curves, plot_epochs_to_target, plot_profiles, verdict

    results = load_results(out / "bench" / "results.json")
    p = results["protocol"]
    bl: list[tuple[str, Any]] = [("h2", "4. The benchmark: how fast does each optimizer reach a target?")]
    bl.append(("p", f"Suite `{p['name']}`: {len(results['cells'])} problem(s), {len(results['methods'])} methods, {p['seeds']} seed(s). "
                    f"The target of each problem is the validation accuracy tuned Adam reaches in {p['reference_epochs']} epochs; "
                    "a method scores the epochs it needs to reach it (fewer is better; 'not reached' is the worst). "
                    "Self-tuning: every method at its default settings, no tuning. The full per-cell tables are in "
                    "bench/report.html."))  # fmt: skip
    bl.append(("md", headline_table(results)))
    for name, fn in (("bench_curves.png", plot_curves), ("bench_epochs_to_target.png", plot_epochs_to_target), ("bench_profiles.png", plot_profiles)):
        bl.append(("img", fn(results, figs / name)))
    lines = verdict(results)
    bl.append(("ul", lines))
    ours = [m for m, v in results["methods"].items() if v["ours"]]
    scores = results["profile_scores"]["self_tuning"]
    best = max(scores, key=lambda m: scores[m])
    notes = []
    for m in ours:
        label = results["methods"][m]["label"]
        if scores[m] >= scores[best]:
            notes.append(f"Benchmark: {label} has the best self-tuning profile score ({scores[m]:.3f}).")
        else:
            notes.append(f"Benchmark: {label} did NOT help overall here: self-tuning profile score {scores[m]:.3f} against "
                         f"{scores[best]:.3f} for {results['methods'][best]['label']}.")  # fmt: skip
    return bl, notes


def write_pipeline_report(out: str | Path, *, figures_dir: str | Path | None = None) -> dict[str, Path]:
    """Render ``OUT/report.md`` and ``OUT/report.html`` from a pipeline folder's artifacts
    (every stage that completed gets its section); returns the paths."""
    from metalearner.report.bench import to_html, to_markdown

    out = Path(out)
    records = {n: _record(out, n) for n in STAGE_TITLES}
    stages = {n: rec if rec and rec.get("status") == "complete" else None for n, rec in records.items()}
    if not any(stages[n] for n in ("zoo", "mirror", "meta_train", "bench")):
        raise DataError(f"{out} holds no completed pipeline stage (run `metalearner run --out {out}` first)")
    figs = Path(figures_dir) if figures_dir else out / "report" / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    saved = read_json(out / "pipeline.json") if (out / "pipeline.json").exists() else {}
    preset = saved.get("preset", "?") if isinstance(saved, dict) else "?"
    bl: list[tuple[str, Any]] = [("h1", "metalearner: what was learned about training")]
    bl.append(("p", "metalearner studies how neural networks train and learns to make training faster. This report comes from one "
                    f"command (`metalearner run --preset {preset}`): it trained a zoo of small networks while recording the physics "
                    "of every step, learned to predict training from those records (the mirror), used a learned optimizer whose "
                    "settings are chosen by a network, and benchmarked it against standard optimizers."))  # fmt: skip
    rows, missing = [], []
    for n, rec in stages.items():
        if rec:
            rows.append([n, STAGE_TITLES[n], f"{rec.get('wall_s', 0.0):.0f}", rec["key"]])
        elif n != "report":  # the report stage is the one running now, or `metalearner report`
            status = str((records[n] or {}).get("status", "not run"))  # interrupted, running (killed) or not run
            rows.append([n, STAGE_TITLES[n], "-", status])
            missing.append(f"{n} ({status})")
    bl.append(("table", (["stage", "what", "wall time (s)", "cache key"], rows)))
    verdict: list[str] = []
    if missing:
        verdict.append(f"This report is partial: {', '.join(missing)} did not complete, so its sections are absent. "
                       f"Rerun `metalearner run --preset {preset} --out {out}` to finish (completed stages are kept).")  # fmt: skip
    sections = []
    if stages["zoo"]:
        sections.append(lambda: _zoo_section(out, figs, stages["report"]["config"]["probe_runs"] if stages["report"] else 3))
    if stages["mirror"] and stages["dataset"]:
        sections.append(lambda: _mirror_section(out, figs))
    if stages["meta_train"]:
        sections.append(lambda: _lopt_section(out, figs, stages["meta_train"]))
    if stages["bench"]:
        sections.append(lambda: _bench_section(out, figs))
    for make in sections:
        b, notes = make()
        bl += b
        verdict += notes
    bl.append(("h2", "5. Verdict, in plain words"))
    small = preset in ("tiny", "quick")
    if small:
        verdict.append(f"This is the `{preset}` preset: small problems and few seeds, meant to show the whole method working on a "
                       "laptop in minutes. Its numbers are noisy; the `full` preset is the mission's scale.")  # fmt: skip
    bl.append(("ul", verdict))
    paths = {"md": out / "report.md", "html": out / "report.html"}
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(to_markdown(bl, out))
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(to_html(bl, title="metalearner report"))
    return paths
