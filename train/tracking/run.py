"""Opening, describing and closing the MLflow run that records one training.

The run is a context manager whose exit decides the end state: FINISHED when the body returns,
KILLED on an interrupt, FAILED on anything else. Nothing of ours leaves a run RUNNING, with one
exception that is the honest one: when the server itself is gone at the end (`RecordIncomplete`),
the end state waits, with the undelivered record, for `python -m train.tracking.sync`.
"""

from __future__ import annotations

import math
import os
import re
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunInfo, RunStatus
from mlflow.environment_variables import (MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR, MLFLOW_HTTP_REQUEST_MAX_RETRIES,
                                          MLFLOW_HTTP_REQUEST_TIMEOUT, MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT,
                                          MLFLOW_SYSTEM_METRICS_NODE_ID, MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
                                          MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL)

from train.errors import RecordIncomplete, TrackingUnavailable
from train.redact import redact
from train.tracking.mlflow_internals import forget_active_run
from train.tracking.names import flatten, sanitize_key
from train.tracking.record import RunRecord, clean_tags, create_run
from train.tracking.resume import RECORDED_CONFIG

EMBEDDED_DB = "mlflow.db"
# An experiment's kind, as MLflow's UI records it (its kind selector writes this tag): model training. The 3.17 UI
# does not read it (docs/tracking.md#the-mlflow-ui); it is set on the experiments created here, at no cost, and
# never over anyone's choice.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The pod's node, from the downward API (kubernetes_job_template.yaml): on Kubernetes it names the system metrics.
NODE_ENV = "NODE_NAME"

# MLflow prints "View run ... at: <tracking URI>/..." whenever a run ends, credentials in the URI included;
# the links this package prints are redacted (run_url).
os.environ.setdefault(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.name, "true")
# Its download progress bars would surround a refusal's one line on stderr.
os.environ.setdefault(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false")


# The cause at the bottom of urllib3's "Max retries exceeded ... (Caused by NewConnectionError(...))" chains.
_NETWORK_CAUSE = re.compile(r"(\[Errno -?\d+\] [^\"')]+|Read timed out|Connection refused|Connection reset by peer)")


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    cause = _NETWORK_CAUSE.search(first) if "Max retries exceeded" in first else None
    return redact(cause.group(1) if cause else first)


@contextmanager
def _environment_restored(variables: Sequence[Any]) -> Iterator[None]:
    """MLflow's environment `variables` (MLflow reads its settings from them) as they were before the block."""
    saved = {var.name: os.environ.get(var.name) for var in variables}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextmanager
def fail_fast_requests(timeout_s: float) -> Iterator[None]:
    """MLflow's REST calls without retries and with a short timeout (MLflow reads both per request)."""
    with _environment_restored((MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT)):
        os.environ[MLFLOW_HTTP_REQUEST_MAX_RETRIES.name] = "0"
        os.environ[MLFLOW_HTTP_REQUEST_TIMEOUT.name] = str(max(1, math.ceil(timeout_s)))
        yield


def _refused_credentials(error: Exception) -> bool:
    return any(f"error code {code}" in str(error) or f"Status code {code}" in str(error) for code in (401, 403))


def check_reachable(tracking_uri: str, timeout_s: float) -> None:
    """Ask the tracking store something cheap until it answers; TrackingUnavailable after `timeout_s`.

    MLflow's own retries take about 4 minutes to give up; a run should not start before we know.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with fail_fast_requests(max(deadline - time.monotonic(), 1)):
                MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
            return
        except Exception as error:  # noqa: BLE001 - MLflow, SQLAlchemy and requests each raise their own
            if _refused_credentials(error) or time.monotonic() + 1 > deadline:
                raise TrackingUnavailable(
                    f"mlflow.tracking_uri: cannot use {redact(tracking_uri)} (waited {timeout_s:g} s, "
                    f"mlflow.startup_timeout_s): {one_line(error)}") from error
            time.sleep(1)


def check_artifacts_writable(record: RunRecord, config: Mapping[str, Any], timeout_s: float) -> None:
    """The run's first artifact, the resolved config, written within `timeout_s` or TrackingUnavailable."""
    try:
        with fail_fast_requests(timeout_s):
            record.log_yaml(config, RECORDED_CONFIG)
    except Exception as error:  # noqa: BLE001 - boto3, requests and MLflow each raise their own
        uri = record.client.get_run(record.run_id).info.artifact_uri
        where = " (the tracking server proxies them: check its artifact store)" if uri.startswith(
            "mlflow-artifacts:") else ""
        raise TrackingUnavailable(f"artifact store: cannot write the run's artifacts to {redact(uri)}{where} "
                                  f"within {timeout_s:g} s (mlflow.startup_timeout_s): {one_line(error)}") from error


def embedded_tracking_uri(folder: Path) -> str:
    return f"sqlite:///{(folder / EMBEDDED_DB).resolve()}"


def resolve_tracking_uri(configured: Optional[str]) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI (already folded into the config), else a local SQLite file."""
    return configured or embedded_tracking_uri(Path.cwd())


def legacy_params(config: Mapping[str, Any]) -> Dict[str, str]:
    """The flat names train_wrapper.py logged; dashboards and queries still use them."""
    return {
        "epochs": str(config["train"]["epochs"]),
        "imgsz": str(config["train"]["imgsz"]),
        "batch": str(config["train"]["batch"]),
        "dataset": config["data"]["name"],
        "weights": config["model"]["weights"],
        "device": config["train"]["device"],
    }


def all_params(config: Mapping[str, Any]) -> Dict[str, str]:
    return {key: redact(value) for key, value in {**flatten(config), **legacy_params(config)}.items()}


def experiment_id_for(client: mlflow.MlflowClient, experiment_name: str, tags: Mapping[str, str]) -> str:
    """A sweep trial's parent's experiment; else the named one, created on first use (of kind model training)."""
    parent = tags.get("mlflow.parentRunId")
    if parent:
        return client.get_run(parent).info.experiment_id
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment:
        return experiment.experiment_id
    return client.create_experiment(experiment_name, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND})


def end_status(error: Optional[BaseException]) -> str:
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    return RunStatus.to_string(RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED)


def system_metrics_node_id() -> Optional[str]:
    """What names the system metrics' node (system/<node id>/...): MLFLOW_SYSTEM_METRICS_NODE_ID where set, else the
    pod's node on Kubernetes (NODE_NAME), else none (system/...)."""
    explicit = MLFLOW_SYSTEM_METRICS_NODE_ID.get()
    node = explicit or os.environ.get(NODE_ENV, "").strip()
    return sanitize_key(node) if node else None


@contextmanager
def system_metrics_settings(settings: Mapping[str, Any]) -> Iterator[None]:
    """mlflow.system_metrics' settings (interval, samples per point, node id) for the monitor the block's
    start_run builds, then back as they were. MLflow keeps them in environment variables, read when the monitor is
    built, so a sweep's next trial and the processes started later do not inherit this run's."""
    with _environment_restored((MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING,
                                MLFLOW_SYSTEM_METRICS_NODE_ID)):
        mlflow.set_system_metrics_sampling_interval(settings["sampling_interval_s"])
        mlflow.set_system_metrics_samples_before_logging(settings["samples_before_logging"])
        mlflow.set_system_metrics_node_id(system_metrics_node_id())
        yield


@contextmanager
def active_run(tracking_uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str],
               run_id: Optional[str] = None,
               system_metrics: Optional[Mapping[str, Any]] = None) -> Iterator[mlflow.ActiveRun]:
    """A new run, or `run_id` continued (MLFLOW_RUN_ID, as `mlflow run` and Kubernetes Jobs set it; a resume).

    With `system_metrics` (the config's mlflow.system_metrics) enabled, MLflow's monitor samples the machine on a
    thread of its own for the run's life: it stops when the run ends (within one request to the store, not a
    sampling interval) or, if the server is gone at the end, when the run is forgotten. A continued run's series go
    on from the step after its last one (MLflow's resume_logging), so a retried Job's points follow the first
    attempt's instead of overwriting them. Without it there is no monitor, whatever
    MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says (conf/mlflow/default.yaml folds that variable into the config)."""
    mlflow.set_tracking_uri(tracking_uri)
    if not run_id:
        mlflow.set_experiment(experiment_id=experiment_id_for(mlflow.MlflowClient(), experiment_name, tags))
    log_system_metrics = bool(system_metrics and system_metrics["enabled"])
    with system_metrics_settings(system_metrics) if log_system_metrics else nullcontext():
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else redact(run_name), tags=clean_tags(tags),
                               log_system_metrics=log_system_metrics)
    try:
        yield run
    except RecordIncomplete:
        # The server is unreachable, so mlflow.end_run would spend minutes retrying set_terminated.
        forget_active_run()
        raise
    except BaseException as error:
        if isinstance(error, Exception):
            RunRecord(MlflowClient(), run.info.run_id).set_tags({"error": f"{type(error).__name__}: {one_line(error)}"})
        mlflow.end_run(end_status(error))
        raise
    mlflow.end_run(end_status(None))


def upload_outputs(record: RunRecord, out_dir: Path, save_dir: Path, log_path: Path) -> None:
    """The console log, every YOLOv5 output, and Hydra's record of the job."""
    if log_path.is_file():
        record.log_file(log_path, "logs")
    if save_dir.is_dir():
        record.log_folder(save_dir, "training-output")
    hydra_dir = out_dir / ".hydra"
    if hydra_dir.is_dir():
        record.log_folder(hydra_dir, "config/hydra")


def run_url(tracking_uri: str, info: RunInfo) -> str:
    """Where the run shows in the UI: the server's own, or the one `mlflow ui` serves by default."""
    base = redact(tracking_uri).rstrip("/") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{info.experiment_id}/runs/{info.run_id}"


def record_refused_run(tracking_uri: str, experiment_name: str, run_name: str, tags: Mapping[str, str]) -> None:
    """A FAILED run that only says why it never started (a sweep trial refused for bad input)."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    run = create_run(client, experiment_id_for(client, experiment_name, tags), run_name, tags)
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))


# How long a refusal tries to write itself into the run `mlflow run` opened, before giving up on it.
REFUSAL_RECORD_TIMEOUT_S = 10


def record_refusal(tracking_uri: str, run_id: str, error: str) -> None:
    """The run `mlflow run` opened for this process, FAILED with the refusal as its `error` tag, and nothing else
    written; a run that already ended (a FINISHED one named by mistake, a KILLED one being resumed) or cannot be
    reached is left as it is: the console line still says why."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        with fail_fast_requests(REFUSAL_RECORD_TIMEOUT_S):
            if RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
                return
            client.set_tag(run_id, "error", redact(error))
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception:  # noqa: BLE001 - the refusal itself is what the user must see
        pass


def ui_command(tracking_uri: str) -> str:
    """A command that opens the UI over a local store, as printed: it works without an activated venv."""
    from train.hints import mlflow_command

    project = Path(__file__).resolve().parents[2]
    if tracking_uri == embedded_tracking_uri(project) and Path.cwd().resolve() == project:
        return "make ui"
    return mlflow_command(f"ui --backend-store-uri {tracking_uri} --port 5000")


def print_where_to_look(tracking_uri: str, run_id: str, status: str) -> None:
    """The run's end state and its link; with a local store, the command that serves that link."""
    if not run_id:
        return
    info = MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info
    print(f"MLflow run {run_id} ended {status}: {run_url(tracking_uri, info)}")
    if tracking_uri.startswith("sqlite:"):
        print(f"Open it with: {ui_command(tracking_uri)}")
