"""Running a suite: every (cell, method, lr, seed) job through an executor, resumable.

Layout of ``OUT``::

    OUT/suite.json        every method and cell the directory holds jobs of (a suite, saved whole)
    OUT/jobs/KEY.json     one finished job (atomic); a rerun skips jobs whose file exists
    OUT/results.json      every cell, ruleset, method and seed, with the curves (see assemble)
    OUT/report.md|.html   rendered by metalearner.report.bench
    OUT/parts/KEY/        results.json and the report of a part of that suite (``select``)

Jobs run in three waves, because later ones need earlier results: (1) the tuning trials and
the self-tuning runs of methods that do not need the budget, (2) the tuned runs of those
methods (their lr comes from wave 1), which give each cell its target, (3) the budget-aware
methods, which are scored against the target (the budget-10 run first; then budgets from
the smallest up until one reaches the target, assuming that a longer budget does no worse).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from metalearner.atomic import write_json
from metalearner.bench.metrics import budget_epochs_to_target, epochs_to_target, lower_median
from metalearner.bench.protocol import Cell, Suite
from metalearner.errors import ConfigError, MetalearnerError
from metalearner.methods import get_method
from metalearner.parallel import DirectoryLock
from metalearner.progress import Progress

RULESETS = ("self_tuning", "tuned")


def job_key(job: dict[str, Any]) -> str:
    body = {k: v for k, v in job.items() if k not in ("data_dir", "options")}  # options: a path; its weights' fingerprint counts
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _task(task_json: str, data_dir: str | None) -> Any:
    from metalearner.tasks.task import TaskConfig, make_task

    return make_task(TaskConfig.from_dict(json.loads(task_json)), data_dir=data_dir)


def train_once(job: dict[str, Any], budget: float, target: float | None = None) -> dict[str, Any]:
    """One training run of ``job`` at ``budget`` epochs (stopping at ``target`` if given)."""
    from metalearner.train import Budget, RunConfig, train_run

    task = _task(json.dumps(job["task"], sort_keys=True), job.get("data_dir"))
    per_epoch = Budget.of(task.data.n_train, task.config.batch_size, epochs=budget).per_epoch
    cfg = RunConfig(task=task.config, optimizer=job["method"], lr=job["lr"], epochs=budget, seed=job["seed"],
                    eval_every=max(1, per_epoch // job["evals_per_epoch"]), target_acc=target,
                    options=job.get("options", {}), device=job.get("device", "cpu"))  # fmt: skip
    t0 = time.perf_counter()
    res = train_run(cfg, task=task, probe=False, test=target is None)
    wall = time.perf_counter() - t0
    train_s = wall - res.eval_seconds
    return {
        "budget": budget, "status": res.status, "steps": res.steps,
        "curve": [[round(h["epoch"], 4), h["val_acc"], h["val_loss"]] for h in res.history],
        "val_acc": res.final.get("val_acc"), "test_acc": res.final.get("test_acc"),
        "wall_s": wall, "train_s": train_s, "ms_per_step": 1000 * train_s / max(res.steps, 1),
    }  # fmt: skip


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """A plain job is one run at the reference budget; a budget job (``job["budgets"]``) runs
    the reference budget, then smaller budgets in increasing order until one reaches the target."""
    ref = job["epochs"]
    runs = [train_once(job, ref)]
    budgets, target = job.get("budgets"), job.get("target")
    if budgets and target is not None and epochs_to_target(runs[0]["curve"], target) < math.inf:
        for b in budgets:
            if b >= ref:
                break
            runs.append(train_once(job, b, target))
            if runs[-1]["status"] == "target_reached":
                break
    return {"key": job_key(job), "job": {k: v for k, v in job.items() if k != "data_dir"}, "runs": runs}


def reached(result: dict[str, Any], target: float) -> dict[float, bool]:
    """For each run of a finished job, keyed by its budget: did it reach ``target``?"""
    return {r["budget"]: epochs_to_target(r["curve"], target) < math.inf for r in result["runs"]}


def score(result: dict[str, Any], target: float) -> float:
    """Epochs to target of a finished job (the budget rule for budget jobs)."""
    if not result["job"].get("budgets"):
        return epochs_to_target(result["runs"][0]["curve"], target)
    return budget_epochs_to_target(reached(result, target))


class Bench:
    """The state of one suite in one directory: finished jobs, tuned lrs, targets."""

    def __init__(self, suite: Suite, out_dir: str | Path, *, data_dir: str | None = None, device: str = "cpu",
                 weights: dict[str, str] | None = None) -> None:  # fmt: skip
        """``weights``: method name -> a safetensors file to run it with instead of its shipped weights."""
        self.suite, self.out, self.data_dir = suite, Path(out_dir), data_dir
        self.device, self.weights = device, dict(weights or {})
        self.jobs_dir = self.out / "jobs"
        self.done: dict[str, dict[str, Any]] = {}
        _union(_saved_suite(self.out), suite, self.out)  # a directory of a different suite is refused here, before any work
        self.results_dir = self.out  # where run() writes results.json (OUT/parts/KEY for a part of the directory's suite)
        if self.jobs_dir.is_dir():
            for f in sorted(self.jobs_dir.glob("*.json")):
                try:
                    r = json.loads(f.read_text())
                    self.done[r["key"]] = r
                except (ValueError, KeyError):
                    f.unlink()  # unreadable: run it again

    def job(self, cell: Cell, method: str, lr: float, seed: int, *, target: float | None = None) -> dict[str, Any]:
        """A job's content, which is also its cache key (``job_key``): a learned optimizer's
        jobs carry its weights' fingerprint, so that re-shipped weights rerun them."""
        s, m = self.suite, get_method(method)
        budget_aware = m.budget_aware and target is not None
        job = {
            "cell": cell.name, "task": cell.task.to_dict(), "method": method, "lr": float(lr), "seed": int(seed),
            "epochs": s.reference_epochs, "evals_per_epoch": s.evals_per_epoch,
            "budgets": list(s.budgets) if budget_aware else None, "target": target if budget_aware else None,
            "data_dir": self.data_dir,
        }  # fmt: skip
        if m.weights is not None:
            job["weights"] = m.weights_fingerprint()
        if method in self.weights:
            from metalearner.lopt.policy import PolicyWeights

            job["options"] = {"weights": str(self.weights[method])}
            job["weights"] = PolicyWeights.load(self.weights[method]).fingerprint()
        if self.device != "cpu":
            job["device"] = self.device  # absent on the CPU: the keys of earlier results stay valid
        return job

    def result(self, job: dict[str, Any]) -> dict[str, Any]:
        return self.done[job_key(job)]

    def execute(self, jobs: Iterable[dict[str, Any]], executor: Any, label: str, progress: Callable[..., Any] | None) -> None:
        todo = {job_key(j): j for j in jobs if job_key(j) not in self.done}
        if not todo:
            return
        order = sorted(todo.values(), key=lambda j: -_cost(j))  # long jobs first: less idle time at the end
        failures = []
        bar = progress(label, len(order)) if progress else None
        for job, res in executor.map_unordered(run_job, order):
            if isinstance(res, BaseException):
                failures.append(f"{job['cell']} {job['method']} lr={job['lr']:g} seed={job['seed']}: {res!r}")
            else:
                write_json(self.jobs_dir / f"{res['key']}.json", res)
                self.done[res["key"]] = res
            if bar:
                bar.advance()
        if failures:
            raise MetalearnerError(f"{len(failures)} benchmark job(s) failed (finished ones are kept; rerun to retry): " + "; ".join(failures[:3]))

    # -- the protocol ---------------------------------------------------------------------

    def tuning_jobs(self, cell: Cell) -> dict[str, list[dict[str, Any]]]:
        return {m: [self.job(cell, m, lr, self.suite.tuning_seed) for lr in get_method(m).tuning_lrs()] for m in self.suite.methods}

    def tuned_lr(self, cell: Cell, method: str) -> float:
        """The grid lr with the best final validation accuracy on the tuning seed (ties: the default)."""
        m = get_method(method)
        trials = [(self.result(j)["runs"][0]["val_acc"] or 0.0, -abs(math.log(j["lr"] / m.default_lr)), j["lr"])
                  for j in self.tuning_jobs(cell)[method]]  # fmt: skip
        return max(trials)[2]

    def lr(self, cell: Cell, method: str, ruleset: str) -> float:
        return get_method(method).default_lr if ruleset == "self_tuning" else self.tuned_lr(cell, method)

    def target(self, cell: Cell) -> float:
        ref = self.suite.reference_method
        lr = self.tuned_lr(cell, ref)
        return lower_median(self.result(self.job(cell, ref, lr, s))["runs"][0]["val_acc"] or 0.0 for s in range(self.suite.seeds))

    def scoring_jobs(self, cell: Cell, ruleset: str, budget_aware: bool, target: float | None = None) -> list[dict[str, Any]]:
        return [
            self.job(cell, m, self.lr(cell, m, ruleset), seed, target=target)
            for m in self.suite.methods if get_method(m).budget_aware == budget_aware
            for seed in range(self.suite.seeds)
        ]  # fmt: skip

    def run(self, executor: Any, progress: Callable[..., Any] | None = None) -> dict[str, Any]:
        with DirectoryLock(self.out):
            holds = _union(_saved_suite(self.out), self.suite, self.out)  # read under the lock: another run may have widened it
            self.results_dir = results_dir(self.suite, self.out, holds)
            write_json(self.out / "suite.json", holds.to_dict())
            cells = self.suite.cells
            wave1 = [j for c in cells for js in self.tuning_jobs(c).values() for j in js]
            wave1 += [j for c in cells for j in self.scoring_jobs(c, "self_tuning", False)]
            self.execute(wave1, executor, "tuning + self-tuning runs", progress)
            self.execute([j for c in cells for j in self.scoring_jobs(c, "tuned", False)], executor, "tuned runs", progress)
            targets = {c.name: self.target(c) for c in cells}
            wave3 = [j for c in cells for r in RULESETS for j in self.scoring_jobs(c, r, True, targets[c.name])]
            self.execute(wave3, executor, "budget-aware runs", progress)
            results = self.assemble()
            write_json(self.results_dir / "results.json", results)
        return results

    def assemble(self) -> dict[str, Any]:
        """Everything the report needs, per cell / ruleset / method / seed (see docs/benchmark.md)."""
        from metalearner.bench.summary import summarise

        cells = {}
        for c in self.suite.cells:
            target = self.target(c)
            rulesets: dict[str, Any] = {}
            for r in RULESETS:
                rulesets[r] = {}
                for m in self.suite.methods:
                    lr = self.lr(c, m, r)
                    seeds = []
                    for s in range(self.suite.seeds):
                        res = self.result(self.job(c, m, lr, s, target=target))
                        ref, hits = res["runs"][0], reached(res, target)
                        seeds.append({
                            "seed": s, "epochs_to_target": score(res, target), "status": ref["status"],
                            "single_run_epochs_to_target": epochs_to_target(ref["curve"], target),  # one run at the full budget
                            "test_acc": ref["test_acc"], "val_acc": ref["val_acc"], "wall_s": ref["wall_s"],
                            "ms_per_step": ref["ms_per_step"], "curve": ref["curve"],
                            "budget_runs": [{"budget": b["budget"], "reached": hits[b["budget"]], "wall_s": b["wall_s"]}
                                            for b in res["runs"]],
                        })  # fmt: skip
                    rulesets[r][m] = {"lr": lr, "seeds": seeds}
            tuning = {m: [{"lr": j["lr"], "val_acc": self.result(j)["runs"][0]["val_acc"]} for j in js]
                      for m, js in self.tuning_jobs(c).items()}  # fmt: skip
            cells[c.name] = {"role": c.role, "task": c.task.to_dict(), "target": target, "tuning": tuning, "rulesets": rulesets}
        return summarise(self.suite, cells, self.weights)


def _saved_suite(out: Path) -> Suite | None:
    """The suite a directory's ``suite.json`` lists (None: a new directory)."""
    saved = out / "suite.json"
    if not saved.exists():
        return None
    try:
        return Suite.from_dict(json.loads(saved.read_text()))
    except (ValueError, TypeError, KeyError, ConfigError) as e:
        raise MetalearnerError(f"{out} holds results of a suite this version cannot read ({e}); use another --out") from None


def _union(old: Suite | None, new: Suite, out: Path) -> Suite:
    """The suite of a directory that held ``old`` and now runs ``new``: the same protocol (all
    but the methods and cells; a cell's name means one task), more methods or cells allowed;
    notes and cell roles are description, not protocol: the new ones replace the old."""
    if old is None:
        return new
    cells, latest = {c.name: c for c in old.cells}, {c.name: c for c in new.cells}
    differ = [f.name for f in dataclasses.fields(Suite)
              if f.name not in ("methods", "cells", "notes") and getattr(old, f.name) != getattr(new, f.name)]  # fmt: skip
    differ += [f"cell {c.name}" for c in new.cells if c.name in cells and cells[c.name].task != c.task]
    if differ:
        raise MetalearnerError(f"{out} holds results of a different suite ({old.name}; {', '.join(differ)} differ); use another --out")
    return dataclasses.replace(old, notes=new.notes, methods=(*old.methods, *(m for m in new.methods if m not in old.methods)),
                               cells=(*(latest.get(c.name, c) for c in old.cells), *(c for c in new.cells if c.name not in cells)))  # fmt: skip


def results_dir(suite: Suite, out_dir: str | Path, holds: Suite | None = None) -> Path:
    """Where ``suite``'s results.json and report go: ``out_dir`` when it is everything the
    directory holds, else ``out_dir/parts/KEY`` (a part never overwrites its whole's results)."""
    out = Path(out_dir)
    holds = holds or _union(_saved_suite(out), suite, out)
    if holds == suite:
        return out
    return out / "parts" / hashlib.sha1(json.dumps(suite.to_dict(), sort_keys=True).encode()).hexdigest()[:8]


def _cost(job: dict[str, Any]) -> float:
    """A rough relative cost, for ordering: epochs times the model's first-layer size."""
    t = job["task"]
    size = {"mnist": 784, "fashion_mnist": 784}.get(t["dataset"], 40)
    return job["epochs"] * (2.5 if job.get("budgets") else 1.0) * size * t["model"]["width"] * (1 + 0.3 * t["model"]["depth"])


def run_suite(suite: Suite, out_dir: str | Path, executor: Any, *, data_dir: str | None = None,
              progress: bool = True, device: str = "cpu", weights: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Run (or finish) ``suite`` into ``out_dir`` and render its report; returns the results.
    ``device`` and ``weights`` as :class:`Bench` takes them."""
    from metalearner.report.bench import write_report

    bench = Bench(suite, out_dir, data_dir=data_dir, device=device, weights=weights)
    with Progress(progress) as display:
        results = bench.run(executor, display.bar)
    write_report(results, bench.results_dir)
    return results
