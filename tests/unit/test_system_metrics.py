"""MLflow's system metrics through train.tracking.run.active_run, on a real SQLite store: the series and their names,
the node id on Kubernetes, a continued run's steps, a prompt end, the monitor stopped when the server is gone at the
end; and the experiment kind set where experiments are created."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Dict, Iterator, List

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.tracking import _tracking_service, fluent

from train.compose import compose_config
from train.config import to_container
from train.errors import ConfigError, RecordIncomplete
from train.tracking import mlflow_internals
from train.tracking.run import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, active_run, experiment_id_for

# What MLflow 3.17.2's CPU, disk and network monitors log on every machine (mlflow/system_metrics/metrics/).
SERIES = ("cpu_utilization_percentage", "system_memory_usage_megabytes", "system_memory_usage_percentage",
          "disk_usage_percentage", "disk_usage_megabytes", "disk_available_megabytes",
          "network_receive_megabytes", "network_transmit_megabytes")
FAST = {"enabled": True, "sampling_interval_s": 0.5, "samples_before_logging": 1}
_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING",
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING",
        "MLFLOW_SYSTEM_METRICS_NODE_ID", "NODE_NAME")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('system-metrics') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments(max_results=1)  # creates the tables once: seconds
    return uri


@pytest.fixture(autouse=True)
def isolated(monkeypatch) -> Iterator[None]:
    """MLflow's process-wide state (tracking URI, active experiment, environment) as it was before each test."""
    saved = {name: os.environ.pop(name, None) for name in _ENV}
    monkeypatch.setattr(_tracking_service.utils, "_tracking_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
    yield
    while mlflow.active_run():
        mlflow.end_run()
    for name, value in saved.items():
        os.environ.pop(name, None)
        if value is not None:
            os.environ[name] = value


def wait_for_points(client: MlflowClient, run_id: str, keys: List[str], points: int = 1,
                    timeout_s: float = 5.0) -> Dict[str, List[int]]:
    """The steps of each of `keys`, once each has at least `points`."""
    deadline = time.monotonic() + timeout_s
    while True:
        steps = {key: [m.step for m in client.get_metric_history(run_id, key)] for key in keys}
        if all(len(s) >= points for s in steps.values()) or time.monotonic() > deadline:
            return steps
        time.sleep(0.1)


def test_a_run_records_cpu_memory_disk_and_network_under_system(store):
    client = MlflowClient(store)
    with active_run(store, "sm-series", "sm-series-run", {}, system_metrics=FAST) as run:
        steps = wait_for_points(client, run.info.run_id, [f"system/{s}" for s in SERIES])
    assert all(steps.values()), steps
    keys = set(client.get_run(run.info.run_id).data.metrics)
    assert {f"system/{s}" for s in SERIES} <= keys
    # Nothing else but the per-GPU series, and those only where NVML finds a GPU.
    assert all(k[len("system/"):] in SERIES or k.startswith("system/gpu_") for k in keys), sorted(keys)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    # MLflow's settings were this run's alone: nothing of them is left in the environment.
    assert not any(os.environ.get(name) for name in _ENV[3:])


def test_ending_the_run_does_not_wait_for_the_sampling_interval(store):
    slow = {**FAST, "sampling_interval_s": 60}
    with active_run(store, "sm-end", "sm-end-run", {}, system_metrics=slow) as run:
        monitor = mlflow_internals.system_metrics_monitor(run.info.run_id)
        assert monitor is not None and monitor.sampling_interval == 60
        started = time.monotonic()
    assert time.monotonic() - started < 2  # the monitor's wait is cut short; no sample of 60 s is waited for
    assert mlflow_internals.system_metrics_monitor(run.info.run_id) is None


def test_on_kubernetes_the_node_names_the_series_and_a_retry_continues_the_steps(store, monkeypatch):
    client = MlflowClient(store)
    monkeypatch.setenv("NODE_NAME", "gke-pool-1-a")  # as the Job template's downward API sets it
    with pytest.raises(KeyboardInterrupt):  # the first attempt, evicted: KILLED
        with active_run(store, "sm-node", "sm-node-run", {}, system_metrics=FAST) as run:
            wait_for_points(client, run.info.run_id, ["system/gke-pool-1-a/cpu_utilization_percentage"], points=2)
            raise KeyboardInterrupt
    run_id = run.info.run_id
    first = [m.step for m in client.get_metric_history(run_id, "system/gke-pool-1-a/cpu_utilization_percentage")]
    assert first[:2] == [0, 1], first
    assert not any(k.startswith("system/") and not k.startswith("system/gke-pool-1-a/")
                   for k in client.get_run(run_id).data.metrics)

    # The retried Job's pod, on another node, continues the same run (MLFLOW_RUN_ID).
    monkeypatch.setenv("NODE_NAME", "gke-pool-1-b")
    with active_run(store, "sm-node", "sm-node-run", {}, run_id, system_metrics=FAST):
        wait_for_points(client, run_id, ["system/gke-pool-1-b/cpu_utilization_percentage"])
    second = [m.step for m in client.get_metric_history(run_id, "system/gke-pool-1-b/cpu_utilization_percentage")]
    assert second and min(second) == max(first) + 1, (first, second)  # after the first attempt's points
    assert [m.step for m in client.get_metric_history(
        run_id, "system/gke-pool-1-a/cpu_utilization_percentage")] == first  # untouched


def test_an_explicit_mlflow_node_id_wins_over_the_node_name(store, monkeypatch):
    client = MlflowClient(store)
    monkeypatch.setenv("NODE_NAME", "gke-pool-1-a")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_NODE_ID", "rank-0")
    with active_run(store, "sm-node-id", "sm-node-id-run", {}, system_metrics=FAST) as run:
        steps = wait_for_points(client, run.info.run_id, ["system/rank-0/cpu_utilization_percentage"])
    assert steps["system/rank-0/cpu_utilization_percentage"]
    assert os.environ["MLFLOW_SYSTEM_METRICS_NODE_ID"] == "rank-0"  # the user's, left as it was


def test_a_run_forgotten_with_the_server_gone_stops_its_monitor(store):
    slow = {**FAST, "sampling_interval_s": 60}
    with pytest.raises(RecordIncomplete):
        with active_run(store, "sm-forget", "sm-forget-run", {}, system_metrics=slow) as run:
            monitor = mlflow_internals.system_metrics_monitor(run.info.run_id)
            raise RecordIncomplete("the server is gone")
    assert monitor._shutdown_event.is_set() and mlflow_internals.system_metrics_monitor(run.info.run_id) is None
    monitor._process.join(5)  # its wait of 60 s cut short; a daemon thread in any case, which never holds up exit
    assert not monitor._process.is_alive()
    assert mlflow.active_run() is None
    assert MlflowClient(store).get_run(run.info.run_id).info.status == "RUNNING"  # for train.tracking.sync to end


@pytest.mark.parametrize("settings", [None, {**FAST, "enabled": False}], ids=["none", "disabled"])
def test_off_means_off_whatever_mlflows_variable_says(store, settings):
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"
    with active_run(store, "sm-off", "sm-off-run", {}, system_metrics=settings) as run:
        assert mlflow_internals.system_metrics_monitor(run.info.run_id) is None


def test_config_defaults_and_mlflows_variables():
    assert to_container(compose_config([]))["mlflow"]["system_metrics"] == {
        "enabled": True, "sampling_interval_s": 10.0, "samples_before_logging": 1}
    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "false"
    os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] = "2.5"
    assert to_container(compose_config([]))["mlflow"]["system_metrics"] == {
        "enabled": False, "sampling_interval_s": 2.5, "samples_before_logging": 1}
    assert to_container(compose_config(["mlflow.system_metrics.enabled=true"]))["mlflow"]["system_metrics"][
        "enabled"] is True
    with pytest.raises(ConfigError, match=r"^mlflow.system_metrics.sampling_interval_s: must be > 0, got 0"):
        compose_config(["mlflow.system_metrics.sampling_interval_s=0"])
    with pytest.raises(ConfigError, match=r"^mlflow.system_metrics.samples_before_logging: must be >= 1, got 0"):
        compose_config(["mlflow.system_metrics.samples_before_logging=0"])


def test_experiments_created_here_are_model_training_and_no_one_elses_choice_is_overridden(store):
    client = MlflowClient(store)
    created = experiment_id_for(client, "sm-kind-new", {})
    assert client.get_experiment(created).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    chosen = client.create_experiment("sm-kind-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    untagged = client.create_experiment("sm-kind-untagged")
    assert experiment_id_for(client, "sm-kind-chosen", {}) == chosen
    assert experiment_id_for(client, "sm-kind-untagged", {}) == untagged
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(untagged).tags


def test_the_sweep_parent_run_has_no_monitor(store):
    """The sweep's parent (train/tracking/sweep.py) is created with the client, not mlflow.start_run: it trains
    nothing and samples nothing, whatever MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING says."""
    from train.tracking.record import create_run

    os.environ["MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"] = "true"
    client = MlflowClient(store)
    parent = create_run(client, experiment_id_for(client, "sm-sweep", {}), "sm-sweep-parent", {})
    assert mlflow_internals.system_metrics_monitor(parent.info.run_id) is None
    client.set_terminated(parent.info.run_id)


def test_nvml_is_installed_as_pinned():
    """nvidia-ml-py (requirements.txt) is what MLflow's GPU monitor imports; without it GPU series are skipped."""
    import importlib.metadata

    import pynvml  # noqa: F401

    pins = dict(line.split("==") for line in (Path(__file__).resolve().parents[2] / "requirements.txt")
                .read_text().splitlines() if "==" in line and not line.startswith("#"))
    assert importlib.metadata.version("nvidia-ml-py") == pins["nvidia-ml-py"]
    assert importlib.metadata.version("psutil") == pins["psutil"]
