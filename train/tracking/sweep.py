"""A Hydra multirun, recorded as one MLflow parent run with a child run per trial.

Hydra calls this callback in the process that sweeps. Trials may run in that process or in joblib
workers: they find the parent through PARENT_RUN_ENV, set here before any trial starts (workers
inherit it), and tag themselves `mlflow.parentRunId`, MLflow's own nesting convention, which holds
across processes. At the end the parent gets the table of trials, the best one, and an end state
that is FINISHED only if every trial finished.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

PARENT_RUN_ENV = "YOLOV5_MLFLOW_PARENT_RUN_ID"
# A trial's number where Hydra's job.num cannot say it: in a pod of the kubernetes launcher, each a single run.
TRIAL_ENV = "YOLOV5_MLFLOW_SWEEP_TRIAL"
TRIAL_COLUMNS = ["trial", "run_id", "run_name", "status", "overrides", "objective", "error"]


def _client(config: DictConfig):
    from mlflow import MlflowClient

    from train.tracking.run import resolve_tracking_uri

    return MlflowClient(tracking_uri=resolve_tracking_uri(config.mlflow.tracking_uri))


def _trial_row(run, objective: str) -> Dict[str, Any]:
    tags = run.data.tags
    return {
        "trial": int(tags.get("sweep_trial", -1)),
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "overrides": tags.get("hydra_overrides", ""),
        "objective": run.data.metrics.get(objective),
        "error": tags.get("error", ""),
    }


def _best(rows: List[Dict[str, Any]], maximize: bool) -> Optional[Dict[str, Any]]:
    scored = [r for r in rows if r["status"] == "FINISHED" and r["objective"] is not None
              and not math.isnan(r["objective"])]
    if not scored:
        return None
    return (max if maximize else min)(scored, key=lambda r: r["objective"])


class MlflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.parent_run_id: Optional[str] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from train.tracking.run import experiment_id_for

        client = _client(config)
        experiment_id = os.environ.get("MLFLOW_EXPERIMENT_ID") or experiment_id_for(
            client, config.mlflow.experiment_name, tags={})
        sweeper = OmegaConf.to_container(config.hydra.sweeper, resolve=True)
        tags = {
            "sweep_overrides": " ".join(config.hydra.overrides.task),
            "sweep_sweeper": str(sweeper.get("_target_", "")),
            "sweep_launcher": str(config.hydra.launcher.get("_target_", "")),
            "sweep_objective": f"{config.sweep.objective} ({config.sweep.direction})",
            **config.mlflow.tags,
        }
        if sweeper.get("params"):
            tags["sweep_search_space"] = str(sweeper["params"])
        # Under `mlflow run -e sweep` the project's run is the sweep's parent; trials must not log into it.
        project_run = os.environ.pop("MLFLOW_RUN_ID", None)
        if project_run:
            self.parent_run_id = project_run
            for key, value in tags.items():
                client.set_tag(project_run, key, value)
        else:
            run = client.create_run(experiment_id, run_name=f"{config.mlflow.run_name}-sweep", tags=tags)
            self.parent_run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        print(f"MLflow sweep run {self.parent_run_id} in experiment {experiment_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.parent_run_id is None:
            return
        client = _client(config)
        parent = client.get_run(self.parent_run_id)
        children = client.search_runs([parent.info.experiment_id], max_results=10000,
                                      filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'")
        rows = sorted((_trial_row(run, config.sweep.objective) for run in children), key=lambda r: r["trial"])
        self._log_table(client, rows)
        best = _best(rows, maximize=config.sweep.direction == "maximize")
        if best is not None:
            from train.tracking.names import sanitize_key

            client.set_tag(self.parent_run_id, "best_run_id", best["run_id"])
            client.set_tag(self.parent_run_id, "best_trial", str(best["trial"]))
            client.log_metric(self.parent_run_id, sanitize_key(f"best/{config.sweep.objective}"), best["objective"])
        failed = [r for r in rows if r["status"] != "FINISHED"]
        if failed:
            client.set_tag(self.parent_run_id, "failed_trials",
                           ", ".join(f"{r['trial']} ({r['run_name']}: {r['status']})" for r in failed))
        status = "FAILED" if failed or not rows else "FINISHED"
        client.set_terminated(self.parent_run_id, status)
        print(f"MLflow sweep run {self.parent_run_id} ended {status}: {len(rows)} trials, {len(failed)} failed"
              + (f", best trial {best['trial']} ({config.sweep.objective}={best['objective']:.4f})" if best else ""))
        os.environ.pop(PARENT_RUN_ENV, None)
        if status == "FAILED":
            sys.exit(1)

    def _log_table(self, client, rows: List[Dict[str, Any]]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            table = Path(tmp) / "trials.csv"
            with open(table, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=TRIAL_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
            client.log_artifact(self.parent_run_id, str(table), "sweep")
