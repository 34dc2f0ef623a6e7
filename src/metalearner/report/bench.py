"""The benchmark report: figures, a plain-language verdict, ``report.md`` and ``report.html``.

Both files are rendered from one list of blocks (heading, paragraph, table, figure), so they
say the same thing; the HTML embeds its figures and needs no network.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np

from metalearner.atomic import atomic_path

RULESET_TITLES = {"self_tuning": "self-tuning (defaults, no tuning)", "tuned": "external tuning (lr grid, same trial budget for all)"}


def fmt_epochs(e: float | None) -> str:
    return "not reached" if e is None or not math.isfinite(e) else f"{e:.2f}".rstrip("0").rstrip(".")


def _ci(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    if lo is None or hi is None or not math.isfinite(lo):
        return ""
    return f" [{fmt_epochs(lo)}, {fmt_epochs(hi) if math.isfinite(hi) else '>max'}]"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _label(results: dict[str, Any], m: str) -> str:
    return results["methods"][m]["label"]


def cell_table(results: dict[str, Any], cell: str, ruleset: str) -> tuple[list[str], list[list[str]]]:
    c = results["cells"][cell]
    rows = []
    entries = c["rulesets"][ruleset]
    order = sorted(entries, key=lambda m: (entries[m]["summary"]["epochs_to_target"], -(entries[m]["summary"]["test_acc"] or 0)))
    for m in order:
        e = entries[m]
        s = e["summary"]
        rows.append([
            _label(results, m), f"{e['lr']:.3g}", fmt_epochs(s["epochs_to_target"]) + _ci(s), f"{s['reached']}/{s['seeds']}",
            _pct(s["test_acc"]), f"{s['wall_s']:.1f}", f"{s['step_time_vs_adam']:.2f}" if s["step_time_vs_adam"] else "—",
        ])  # fmt: skip
    head = ["method", "lr", "epochs to target (median [95% CI])", "reached", "test acc @10", "s / 10-epoch run", "step time / Adam"]
    return head, rows


def headline_table(results: dict[str, Any], ruleset: str = "self_tuning") -> str:
    """Markdown: one row per method, one column per cell, median epochs to target."""
    cells = list(results["cells"])
    lines = ["| method | " + " | ".join(f"{c} (target {100 * results['cells'][c]['target']:.2f}%)" for c in cells) + " | profile score |"]
    lines.append("|---" * (len(cells) + 2) + "|")
    for m in results["methods"]:
        vals = [fmt_epochs(results["cells"][c]["rulesets"][ruleset][m]["summary"]["epochs_to_target"]) for c in cells]
        lines.append(f"| {_label(results, m)} | " + " | ".join(vals) + f" | {results['profile_scores'][ruleset][m]:.3f} |")
    return "\n".join(lines)


def verdict(results: dict[str, Any]) -> list[str]:
    """Plain sentences: who is fastest where, where ours win and lose, the goals."""
    out = []
    ours = [m for m, v in results["methods"].items() if v["ours"]]
    for ruleset in ("self_tuning", "tuned"):
        scores = results["profile_scores"][ruleset]
        rank = sorted(scores, key=lambda m: -scores[m])
        out.append(f"**{RULESET_TITLES[ruleset]}**: profile scores, best first: " +
                   ", ".join(f"{_label(results, m)} {scores[m]:.3f}" for m in rank) + ".")  # fmt: skip
        for cell, c in results["cells"].items():
            entries = c["rulesets"][ruleset]
            times = {m: entries[m]["summary"]["epochs_to_target"] for m in entries}
            best = min(times.values())
            winners = [m for m, t in times.items() if t == best]
            if not math.isfinite(best):
                out.append(f"{cell}: no method reached the target ({100 * c['target']:.2f}%) at this ruleset.")
                continue
            line = f"{cell}: fastest {', '.join(_label(results, m) for m in winners)} ({fmt_epochs(best)} epochs)"
            for m in ours:
                t = times[m]
                if t == best:
                    line += f"; {_label(results, m)} WINS (ties count)"
                else:
                    base = [b for b in times if b not in ours]
                    beaten = [b for b in base if times[b] > t]
                    took = "never reached the target" if not math.isfinite(t) else f"{fmt_epochs(t)} epochs"
                    if base and len(beaten) == len(base):  # behind another of ours only
                        line += f"; {_label(results, m)} {took}, behind ours only (faster than all {len(base)} baselines)"
                    else:
                        line += f"; {_label(results, m)} loses ({took}; faster than {len(beaten)} of {len(base)} baselines)"
            out.append(line + ".")
    pair = shift_cells(results)
    if pair:
        for m in ours:
            ranks = []
            for cell in pair:
                times = {k: v["summary"]["epochs_to_target"] for k, v in results["cells"][cell]["rulesets"]["self_tuning"].items()}
                rank = 1 + sum(t < times[m] for t in times.values())
                ranks.append(f"ranks {rank} of {len(times)}" if math.isfinite(times[m]) else "never reaches the target")
            out.append(f"Shift (self-tuning): {_label(results, m)} {ranks[0]} on task A (the unshifted task) and "
                       f"{ranks[1]} on the shifted task B.")  # fmt: skip
    for m, info in results["methods"].items():
        if info["budget_aware"]:
            st = {c: v["rulesets"]["self_tuning"][m]["summary"] for c, v in results["cells"].items()}
            if all("single_run_epochs_to_target" in x for x in st.values()):
                out.append(f"{_label(results, m)} is scored by the budget rule (the smallest of {len(results['protocol']['budgets'])} "
                           "budgets that reaches the target); one run at the full budget, as a user would make it, takes: "
                           + ", ".join(f"{c} {fmt_epochs(x['single_run_epochs_to_target'])}" for c, x in st.items()) + ".")  # fmt: skip
    g = results["goals"]
    for m in ours:
        goal = g.get(m)
        if goal and goal.get("median_epochs_on_headline_cells"):
            eps = ", ".join(fmt_epochs(e) for e in goal["median_epochs_on_headline_cells"])
            ci = g["self_tuning_score_ci95"][m]
            checks = [(k, v) for k, v in goal.items() if isinstance(v, bool)]
            out.append(f"Goals for {_label(results, m)} (epochs on the MNIST/Fashion-MNIST cells: {eps}; self-tuning profile "
                       f"score {goal['self_tuning_score']:.3f}, 95% interval over seeds [{ci[0]:.3f}, {ci[1]:.3f}]): "
                       + "; ".join(f"{k.replace('_', ' ')}: {'MET' if v else 'NOT met'}" for k, v in checks) + ".")  # fmt: skip
        elif goal and "within_3_epochs" in goal:  # results written before the v2 targets
            out.append(f"Goal for {_label(results, m)}: target within 3 epochs on held-out MNIST architectures: "
                       f"{'MET' if goal['within_3_epochs'] else 'NOT met'}.")
        elif goal is not None:
            out.append(f"Goals for {_label(results, m)}: not measured (this suite has no MNIST or Fashion-MNIST cell).")
    return out


# -- figures ----------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(plt, n: int, row_height: float, ncols: int = 3):
    """``n`` panels in rows of ``ncols``; returns the figure and the used axes (the rest hidden)."""
    cols = min(ncols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, row_height * rows), squeeze=False, constrained_layout=True)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _median_curve(seeds: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    by_epoch: dict[float, list[float]] = {}
    for s in seeds:
        for row in s["curve"]:
            by_epoch.setdefault(row[0], []).append(row[1])
    xs = np.array(sorted(by_epoch))
    return xs, np.array([np.median(by_epoch[x]) for x in xs])


def plot_curves(results: dict[str, Any], path: Path, ruleset: str = "self_tuning") -> Path:
    plt = _plt()
    cells = list(results["cells"])
    fig, axes = _grid(plt, len(cells), 3.6)
    for ax, cell in zip(axes, cells):
        c = results["cells"][cell]
        accs = []
        for i, (m, e) in enumerate(c["rulesets"][ruleset].items()):
            xs, ys = _median_curve(e["seeds"])
            ax.plot(xs, ys, lw=2.2 if results["methods"][m]["ours"] else 1.2, ls="-" if results["methods"][m]["ours"] else "--",
                    color=f"C{i}", label=_label(results, m))  # fmt: skip
            accs.extend(ys[len(ys) // 4 :])
        ax.axhline(c["target"], color="k", lw=0.8, ls=":", label="target")
        lo = np.percentile(accs, 5) if accs else 0
        ax.set_ylim(min(lo, c["target"] - 0.01), min(1.0, max(accs + [c["target"]]) + 0.005))
        ax.set_title(cell, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (median over seeds)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"validation curves, {RULESET_TITLES[ruleset]}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_epochs_to_target(results: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    cells = list(results["cells"])
    methods = list(results["methods"])
    cap = results["protocol"]["reference_epochs"] * 1.15
    fig, axes = _grid(plt, len(cells), 0.45 * len(methods) + 1.6)
    y = np.arange(len(methods))
    for ax, cell in zip(axes, cells):
        for k, (ruleset, color) in enumerate((("self_tuning", "C0"), ("tuned", "C1"))):
            for i, m in enumerate(methods):
                s = results["cells"][cell]["rulesets"][ruleset][m]["summary"]
                e, (lo, hi) = s["epochs_to_target"], s["ci95"]
                yy = i + (k - 0.5) * 0.38
                if e is None or not math.isfinite(e):
                    ax.barh(yy, cap, height=0.36, color=color, alpha=0.15, hatch="//")
                    continue
                lo = lo if lo is not None and math.isfinite(lo) else e
                hi = hi if hi is not None and math.isfinite(hi) else cap
                ax.barh(yy, e, height=0.36, color=color)
                ax.errorbar(e, yy, xerr=[[e - lo], [hi - e]], color="k", lw=0.8, capsize=2)
        ax.axvline(results["protocol"]["reference_epochs"], color="k", lw=0.6, ls=":")
        ax.set_yticks(y, [_label(results, m) for m in methods], fontsize=7)
        ax.set_xlim(0, cap)
        ax.set_xlabel("epochs to target (hatched: not reached)")
        ax.set_title(cell, fontsize=9)
    from matplotlib.patches import Patch

    axes[0].legend(handles=[Patch(color="C0", label="self-tuning"), Patch(color="C1", label="tuned")], fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_profiles(results: dict[str, Any], path: Path) -> Path:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, constrained_layout=True)
    for ax, ruleset in zip(axes, ("self_tuning", "tuned")):
        p = results["profiles"][ruleset]
        for i, (m, rho) in enumerate(p["rho"].items()):
            ours = results["methods"][m]["ours"]
            score = results["profile_scores"][ruleset][m]
            ax.step(p["taus"], rho, where="post", lw=2.2 if ours else 1.2, ls="-" if ours else "--", color=f"C{i}",
                    label=f"{_label(results, m)} ({score:.2f})")  # fmt: skip
        ax.set_xlabel("tau (time over the best method's)")
        ax.set_title(RULESET_TITLES[ruleset], fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_ylabel("fraction of cells within tau")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def shift_cells(results: dict[str, Any]) -> tuple[str, str] | None:
    a = [c for c, v in results["cells"].items() if v["role"].startswith("shift A")]
    b = [c for c, v in results["cells"].items() if v["role"].startswith("shift B")]
    return (a[0], b[0]) if a and b else None


def plot_shift(results: dict[str, Any], path: Path) -> Path | None:
    pair = shift_cells(results)
    if pair is None:
        return None
    plt = _plt()
    methods = list(results["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(methods) + 1.8), sharey=True, constrained_layout=True)
    y = np.arange(len(methods))
    cap = results["protocol"]["reference_epochs"] * 1.15
    for k, cell in enumerate(pair):
        ss = [results["cells"][cell]["rulesets"]["self_tuning"][m]["summary"] for m in methods]
        e = [s["epochs_to_target"] if s["epochs_to_target"] is not None and math.isfinite(s["epochs_to_target"]) else cap for s in ss]
        acc = [s["test_acc"] or 0 for s in ss]
        axes[0].barh(y + (k - 0.5) * 0.38, e, height=0.36, label=cell.split("/")[0])
        axes[1].barh(y + (k - 0.5) * 0.38, acc, height=0.36, label=cell.split("/")[0])
    axes[0].set_xlabel(f"epochs to target (own target per task; {cap:g} = not reached)")
    axes[1].set_xlabel("test accuracy after 10 epochs")
    lo = min(s for s in (results["cells"][c]["rulesets"]["self_tuning"][m]["summary"]["test_acc"] or 1 for c in pair for m in methods))
    axes[1].set_xlim(max(0, lo - 0.05), 1)
    axes[0].set_yticks(y, [_label(results, m) for m in methods], fontsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle("distribution shift: A = the concept seen in meta-training, B = A shifted (self-tuning)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- rendering --------------------------------------------------------------------------


def blocks(results: dict[str, Any], figures: dict[str, Path]) -> list[tuple[str, Any]]:
    p = results["protocol"]
    out: list[tuple[str, Any]] = [("h1", f"metalearner benchmark: time to target ({p['name']} suite)")]
    out.append(("p", f"{results['date']}. Target per cell: the validation accuracy tuned constant-lr Adam reaches after "
                     f"{p['reference_epochs']} epochs (median of {p['seeds']} seeds). Time to target: epochs until validation "
                     f"accuracy first reaches it ({p['evals_per_epoch']} evaluations per epoch); budget-aware methods run at budgets "
                     f"{', '.join(map(str, p['budgets']))} and score the smallest that reaches it. Tuning: lr grid x(1/3, 1, 3) "
                     f"around each method's default on seed {p['tuning_seed']}, never a scoring seed. Protocol: docs/benchmark.md."))  # fmt: skip
    for note in p.get("notes", []):
        out.append(("p", f"Note: {note}."))
    for r in results.get("reruns", []):
        out.append(("p", f"Rerun on {r['date']}: {', '.join(_label(results, m) for m in r['methods'])} (with the reference method, "
                         f"whose runs were unchanged), merged into the runs of {r['others_from']} for the other methods."))  # fmt: skip
    out.append(("h2", "Verdict"))
    out.append(("ul", verdict(results)))
    out.append(("h2", "Headline: median epochs to target, self-tuning"))
    out.append(("md", headline_table(results)))
    for key, title in (("curves", "Validation curves"), ("ett", "Epochs to target"), ("profile", "Performance profiles"), ("shift", "Distribution shift")):
        if figures.get(key):
            out.append(("h2", title))
            out.append(("img", figures[key]))
    for cell, c in results["cells"].items():
        seen = c["seen_in_meta_training"]
        out.append(("h2", f"{cell}"))
        out.append(("p", f"{c['role']}; target {100 * c['target']:.2f}% validation accuracy; in meta-training: data "
                         f"{'yes' if seen['data'] else 'no'}, architecture {'yes' if seen['architecture'] else 'no'}."))  # fmt: skip
        for ruleset in ("self_tuning", "tuned"):
            out.append(("h3", RULESET_TITLES[ruleset]))
            out.append(("table", cell_table(results, cell, ruleset)))
    out.append(("h2", "What touched meta-training"))
    for kind, e in results["meta_training"].items():
        out.append(("p", f"{kind}: data sets {', '.join(e['datasets'])} (synthetic concepts with seeds {e['data_seeds']}, "
                         f"{e['n_train']} training examples each), MLP depths {e['depths']}, widths {e['widths']}, activations "
                         f"{', '.join(e['activations'])}, unrolls of {e['unroll_steps']} steps. Command: `{e['command']}`."))  # fmt: skip
    return out


def to_markdown(bl: list[tuple[str, Any]], base: Path) -> str:
    lines = []
    for kind, x in bl:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + x, ""]
        elif kind == "p":
            lines += [x, ""]
        elif kind == "ul":
            lines += [f"- {s}" for s in x] + [""]
        elif kind == "md":
            lines += [x, ""]
        elif kind == "table":
            head, rows = x
            lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
        elif kind == "img":
            lines += [f"![{x.stem}]({x.relative_to(base)})", ""]
    return "\n".join(lines)


def _md_table_html(md: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in md.splitlines() if not r.startswith("|---")]
    head, body = rows[0], rows[1:]
    return _table_html([h.strip() for h in head], [[c.strip() for c in r] for r in body])


def _table_html(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


def _inline(s: str) -> str:
    s = html.escape(s)
    while s.count("**") >= 2:
        s = s.replace("**", "<b>", 1).replace("**", "</b>", 1)
    while s.count("`") >= 2:
        s = s.replace("`", "<code>", 1).replace("`", "</code>", 1)
    return s


def to_html(bl: list[tuple[str, Any]], title: str = "metalearner benchmark") -> str:
    parts = []
    for kind, x in bl:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(x)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline(x)}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline(s)}</li>" for s in x) + "</ul>")
        elif kind == "md":
            parts.append(_md_table_html(x))
        elif kind == "table":
            parts.append(_table_html(*x))
        elif kind == "img":
            data = base64.b64encode(Path(x).read_bytes()).decode()
            parts.append(f'<img alt="{html.escape(x.stem)}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")  # fmt: skip
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write the figures, ``report.md`` and ``report.html`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "curves": plot_curves(results, fig_dir / "curves.png"),
        "ett": plot_epochs_to_target(results, fig_dir / "epochs_to_target.png"),
        "profile": plot_profiles(results, fig_dir / "profiles.png"),
        "shift": plot_shift(results, fig_dir / "shift.png"),
    }
    bl = blocks(results, figures)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(to_markdown(bl, out))
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text(to_html(bl))
    return {**paths, **{k: v for k, v in figures.items() if v}}


def print_summary(results: dict[str, Any], out_dir: str | Path) -> None:
    """The headline table and the verdict on stdout, then where the report is."""
    print(headline_table(results))
    print()
    for line in verdict(results):
        print("- " + line.replace("**", ""))
    print(f"\nreport: {Path(out_dir) / 'report.html'} (and report.md, results.json)")
