"""`python -m bench.breakdown`: where a tracked run's tracking seconds go, stage by stage (figure 12).

Figure 6 says how much tracking adds before the first epoch, per epoch and at the end; this says what those
seconds are. A tracked training runs in a child process (`python -m bench.breakdown --child <overrides>`) that
times the tracking stages as they happen, by wrapping the recipe's own functions for that process only: each
stage's wall-clock seconds, and whether it ran on the training's path (the main thread) or beside it (a thread of
its own). `--before <git ref>` runs the same child against an earlier commit of the recipe (a `git worktree`), so
the page can show before and after side by side; stages an older commit lacks are simply absent. A stage named
"… of which" is part of the stage above it, not added to it. A stage timed on more than one thread (MLflow's map
of installed packages, made by whichever asks first) says so.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import runpy
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any, Dict, List

# (stage, module, attribute): what is timed. Consumers' names are wrapped where they are looked up at call time.
STAGES = (
    ("import mlflow", None, None),  # beyond what training imports anyway (torch, pandas, ...)
    ("check the server", "train.tracking.run", "check_reachable"),
    ("open the run", "mlflow", "start_run"),
    ("config artifact (proves the store takes writes)", "train.tracking.session", "check_artifacts_writable"),
    ("params", "train.tracking.record.RunRecord", "log_params"),
    ("lineage (tags, datasets, installed packages)", "train.tracking.lineage", "record"),
    ("… of which the installed packages scan", "train.tracking.lineage", "installed_packages"),
    ("end: wait for metrics, upload outputs", "train.tracking.session", "_finish_record"),
    ("end: log the model", "train.tracking.session", "_log_model"),  # before: after the uploads
    ("end: log the model", "train.tracking.session.FinalModel", "_log"),  # after: beside them
    ("MLflow's map of installed packages (for its requirements check of the model)",
     "mlflow.utils.requirements_utils", "_init_modules_to_packages_map"),
    ("… of which the serving check (reload and predict)", "mlflow.models.utils", "_validate_serving_input"),
    ("end: wait for the model (after the uploads)", "train.tracking.session.FinalModel", "ready"),
    ("end: close the run", "mlflow", "end_run"),
)
RESULTS = Path(__file__).resolve().parent / "results"
CHILD_TIMEOUT_S = 1800  # a 10-epoch training takes under a minute here: one stuck for this long is not measured


def _wrap(owner: Any, name: str, stage: str, spent: List[Dict[str, Any]]) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append({"stage": stage, "s": time.perf_counter() - started,
                          "thread": "main" if threading.current_thread() is threading.main_thread() else "background"})

    setattr(owner, name, timed)


def _resolve(path: str):
    """A module, or a class inside one ("pkg.module.Class")."""
    try:
        return importlib.import_module(path)
    except ModuleNotFoundError:
        module, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module), cls)


def child(overrides: List[str], out: Path) -> None:
    """One tracked training in this process, its stages timed; the timings written to `out` at exit."""
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        del sys.path[0]  # this file's folder, put first by running it as a script: bench's modules are not train's
    spent: List[Dict[str, Any]] = []
    import numpy, pandas, requests, torch, yaml  # noqa: F401,E401 - imported by any training: not tracking's cost

    started = time.perf_counter()
    import mlflow  # noqa: F401 - the first import, timed

    spent.append({"stage": "import mlflow", "s": time.perf_counter() - started, "thread": "main"})
    for stage, module, attribute in STAGES[1:]:
        try:
            _wrap(_resolve(module), attribute, stage, spent)
        except (ImportError, AttributeError):
            pass  # an older commit without this stage
    import atexit

    atexit.register(lambda: out.write_text(json.dumps(spent)))
    sys.argv = ["train", *overrides]
    runpy.run_module("train", run_name="__main__")


def measure(repo: Path, overrides: List[str], runs: int, env: Dict[str, str], workdir: Path) -> Dict[str, Any]:
    """Median seconds per stage over `runs` tracked trainings of the recipe at `repo`."""
    workdir.mkdir(parents=True, exist_ok=True)
    per_stage: Dict[str, List[float]] = {}
    where: Dict[str, str] = {}
    for i in range(runs):
        out = workdir / f"stages-{i}.json"
        # This file as a script, so `train` is the one at `repo` (PYTHONPATH), whichever commit that is.
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--", *overrides,
                f"hydra.run.dir={workdir / f'run-{i}'}"]
        child_env = {**env, "PYTHONPATH": str(repo)}
        proc = subprocess.run(argv, cwd=repo, env=child_env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"the tracked training failed ({proc.returncode}): {proc.stderr[-2000:]}")
        totals: Dict[str, float] = {}
        for item in json.loads(out.read_text()):
            totals[item["stage"]] = totals.get(item["stage"], 0.0) + item["s"]
            seen = where.get(item["stage"], item["thread"])
            where[item["stage"]] = seen if seen == item["thread"] else "both"
        for stage, seconds in totals.items():
            per_stage.setdefault(stage, []).append(seconds)
    return {stage: {"median_s": round(median(values), 3), "thread": where[stage], "runs": len(values)}
            for stage, values in per_stage.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__.splitlines()[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", help="a git ref of the recipe to measure too (e.g. a commit before a change)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if args.child:
        child(args.overrides, args.child)
        return

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo))  # run as a script (the children), or as `python -m bench.breakdown`
    from bench.harness import client_env, datasets, servers
    from bench.tracking import Settings

    settings = Settings(imgsz=32, batch=64)
    with tempfile.TemporaryDirectory(prefix="yolov5-mlflow-bench-breakdown-") as tmp:
        workdir = Path(tmp)
        data = datasets(workdir / "data", image_size=settings.imgsz)
        overrides = settings.overrides(data, 3, 10)
        results: Dict[str, Any] = {"settings": {"runs": args.runs, "epochs": 10, "overrides": overrides}}
        with servers(workdir / "servers") as server:
            env = client_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME="breakdown",
                             YOLOV5_MLFLOW_CACHE=str(data.cache_dir))
            sides = [("after", repo)]
            if args.before:
                before = workdir / "before"
                subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=repo,
                               check=True, capture_output=True)
                sides.insert(0, (f"before ({args.before})", before))
            try:
                measure(repo, overrides, 1, env, workdir / "warmup")  # the label cache, the server's first run
                for n, (label, where) in enumerate(sides):
                    results[label] = measure(where, overrides, args.runs, env, workdir / f"side-{n}")
            finally:
                if args.before:
                    subprocess.run(["git", "worktree", "remove", "--force", str(workdir / "before")], cwd=repo,
                                   capture_output=True)
                    subprocess.run(["git", "worktree", "prune"], cwd=repo, capture_output=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "breakdown.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


_WHERE = {"main": "on the path", "background": "beside training", "both": "on the path and beside training"}


def table(results: Dict[str, Any]) -> str:
    sides = [k for k in results if k != "settings"]
    lines = ["| stage | " + " | ".join(sides) + " |", "|---|" + "---|" * len(sides)]
    for stage in dict.fromkeys(stage for stage, *_ in STAGES):
        cells = []
        for side in sides:
            found = results[side].get(stage)
            cells.append(f"{found['median_s']:.3f} s ({_WHERE[found['thread']]})" if found else "-")
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
