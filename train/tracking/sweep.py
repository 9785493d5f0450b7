"""A Hydra multirun, recorded as one MLflow parent run with a child run per trial.

Hydra calls this callback in the process that sweeps. Trials may run in that process or in joblib
workers: they find the parent through PARENT_RUN_ENV, set here before any trial starts (workers
inherit it), and tag themselves `mlflow.parentRunId`, MLflow's own nesting convention, which holds
across processes. At the end the parent gets the table of trials, the best one, and an end state
that is FINISHED only if every trial finished.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from typing import Any, Dict, List, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from train.errors import EXIT_OK, EXIT_TRAINING_FAILED, Outcome

PARENT_RUN_ENV = "YOLOV5_MLFLOW_PARENT_RUN_ID"
# How the last multirun of this process ended (exit code 1 when any trial did not finish): train.cli's exit code.
last_sweep_outcome: Optional[Outcome] = None
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
        from train.tracking.record import RunRecord, create_run
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
            RunRecord(client, project_run).set_tags(tags)
        else:
            run = create_run(client, experiment_id, f"{config.mlflow.run_name}-sweep", tags)
            self.parent_run_id = run.info.run_id
        os.environ[PARENT_RUN_ENV] = self.parent_run_id
        print(f"MLflow sweep run {self.parent_run_id} in experiment {experiment_id}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        global last_sweep_outcome
        from train.tracking.record import RunRecord
        from train.tracking.run import run_url, ui_command

        if self.parent_run_id is None:
            return
        client = _client(config)
        record = RunRecord(client, self.parent_run_id)
        parent = client.get_run(self.parent_run_id)
        children = client.search_runs([parent.info.experiment_id], max_results=10000,
                                      filter_string=f"tags.mlflow.parentRunId = '{self.parent_run_id}'")
        rows = sorted((_trial_row(run, config.sweep.objective) for run in children), key=lambda r: r["trial"])
        record.log_text(_table(rows), "sweep/trials.csv")
        best = _best(rows, maximize=config.sweep.direction == "maximize")
        if best is not None:
            from mlflow.entities import Metric

            from train.tracking.names import sanitize_key

            record.set_tags({"best_run_id": best["run_id"], "best_trial": str(best["trial"])})
            record.log_metrics([Metric(sanitize_key(f"best/{config.sweep.objective}"), best["objective"],
                                       int(time.time() * 1000), 0)])
        failed = [r for r in rows if r["status"] != "FINISHED"]
        if failed:
            record.set_tags({"failed_trials": ", ".join(f"{r['trial']} ({r['run_name']}: {r['status']})"
                                                        for r in failed)})
        status = "FAILED" if failed or not rows else "FINISHED"
        record.set_terminated(status)
        url = run_url(client.tracking_uri, parent.info)
        print(f"MLflow sweep run {self.parent_run_id} ended {status}: {len(rows)} trials, {len(failed)} failed"
              + (f", best trial {best['trial']} ({config.sweep.objective}={best['objective']:.4f})" if best else "")
              + f": {url}")
        if client.tracking_uri.startswith("sqlite:"):
            print(f"Open it with: {ui_command(client.tracking_uri)}")
        os.environ.pop(PARENT_RUN_ENV, None)
        last_sweep_outcome = Outcome(EXIT_TRAINING_FAILED if status == "FAILED" else EXIT_OK,
                                     objective=best["objective"] if best else math.nan, run_id=self.parent_run_id)


def _table(rows: List[Dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=TRIAL_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
