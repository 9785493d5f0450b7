"""Hydra multirun sweeps as one MLflow parent run with nested trial runs, against the real server."""

from __future__ import annotations

import csv
import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import TINY, client_env, why

OBJECTIVE = "metrics/mAP_0.5_0.95"


def sweep_record(tracking_server, experiment: str):
    """(parent run, child runs sorted by trial, rows of the parent's trials.csv)"""
    client = tracking_server.client()
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = max((r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time)
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags["sweep_trial"]))
    key = f"{parent.info.experiment_id}/{parent.info.run_id}/artifacts/sweep/trials.csv"
    table = tracking_server.s3().get_object(Bucket="mlflow", Key=key)["Body"].read().decode()
    return parent, children, list(csv.DictReader(io.StringIO(table)))


def test_grid_sweep_nests_every_trial_and_names_the_best(train, tracking_server):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-grid")
    proc = train("-m", *TINY, "train.epochs=1", "model=yolov5n,yolov5s", "hyp.lr0=0.01,0.001", env=env)
    assert proc.returncode == 0, why(proc)
    parent, children, rows = sweep_record(tracking_server, "e2e-grid")
    assert len(children) == 4 and [int(c.data.tags["sweep_trial"]) for c in children] == [0, 1, 2, 3]
    assert {(c.data.params["model.name"], c.data.params["hyp.lr0"]) for c in children} == {
        ("yolov5n", "0.01"), ("yolov5n", "0.001"), ("yolov5s", "0.01"), ("yolov5s", "0.001")}
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert "model=yolov5n,yolov5s" in parent.data.tags["sweep_overrides"]
    # Names tell the parent and each trial apart in the runs list; the last line links the parent.
    assert parent.info.run_name.endswith("-sweep")
    assert [c.info.run_name.rsplit("-", 1)[1] for c in children] == ["trial0", "trial1", "trial2", "trial3"]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"MLflow sweep run {parent.info.run_id} ended FINISHED") and last.endswith(
        f"{tracking_server.uri}/#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}")

    assert [r["run_id"] for r in rows] == [c.info.run_id for c in children]
    for row, child in zip(rows, children):
        assert row["status"] == "FINISHED" and float(row["objective"]) == pytest.approx(child.data.metrics[OBJECTIVE])
        assert row["overrides"] == child.data.tags["hydra_overrides"]
    best = max(children, key=lambda c: c.data.metrics[OBJECTIVE])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/metrics/mAP_0.5_0.95"] == pytest.approx(best.data.metrics[OBJECTIVE])


def test_failed_trials_never_stop_the_others_and_fail_the_parent(train, tracking_server):
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-grid-failing")
    # imgsz=100 and device=0 (no GPU here) are refused before training. Only (64, cpu) can finish.
    proc = train("-m", *TINY, "train.epochs=1", "train.imgsz=64,100", "train.device=cpu,0", env=env)
    assert proc.returncode == 1, why(proc)
    parent, children, rows = sweep_record(tracking_server, "e2e-grid-failing")
    assert [c.info.status for c in children] == ["FINISHED", "FAILED", "FAILED", "FAILED"]
    assert children[2].data.tags["error"].startswith("train.imgsz: must be a positive multiple of 32")
    assert parent.info.status == "FAILED"
    for trial in ("1 (", "2 (", "3 ("):
        assert trial in parent.data.tags["failed_trials"]
    assert parent.data.tags["best_run_id"] == children[0].info.run_id
    assert [r["status"] for r in rows] == ["FINISHED", "FAILED", "FAILED", "FAILED"]


@pytest.mark.parametrize("backend", ["tracking_server", "postgres_tracking_server"], ids=["sqlite", "postgresql"])
def test_parallel_sweep_loses_nothing(train, request, backend):
    server = request.getfixturevalue(backend)
    experiment = f"e2e-parallel-{backend}"
    env = client_env(MLFLOW_TRACKING_URI=server.uri, MLFLOW_EXPERIMENT_NAME=experiment)
    proc = train("-m", "hydra/launcher=parallel", "sweep.n_jobs=4", *TINY, "train.epochs=2",
                 "hyp.lr0=0.01,0.005,0.002,0.001", env=env)
    assert proc.returncode == 0, why(proc)
    parent, children, rows = sweep_record(server, experiment)
    assert parent.info.status == "FINISHED" and len(children) == 4 and len(rows) == 4
    assert "joblib" in parent.data.tags["sweep_launcher"]
    client = server.client()
    for child in children:
        assert child.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(child.info.run_id, OBJECTIVE)) == [0, 1]
    server_log = server.log.read_text()
    assert "Traceback" not in server_log and "database is locked" not in server_log


@pytest.mark.parametrize("backend", ["tracking_server", "postgres_tracking_server"], ids=["sqlite", "postgresql"])
def test_trials_recording_one_new_dataset_at_once_all_record_it(request, backend, monkeypatch):
    """Parallel trials log the same new dataset within milliseconds of each other; the server's check-then-insert
    lets some of them lose the race (10 of 60 here without train.tracking.lineage's retry)."""
    from train.tracking.lineage import log_datasets
    from train.tracking.record import RunRecord

    server = request.getfixturevalue(backend)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    client = server.client()
    experiment_id = client.create_experiment(f"e2e-dataset-race-{backend}")

    def record(run_id: str, digests) -> None:
        log_datasets(RunRecord(server.client(), run_id), "synthetic", "/data/synthetic", digests)

    for round_ in range(10):
        runs = [client.create_run(experiment_id).info.run_id for _ in range(6)]
        digests = {"training": f"{round_:016x}", "validation": f"{round_ + 100:016x}"}
        with ThreadPoolExecutor(len(runs)) as pool:
            list(pool.map(lambda run_id: record(run_id, digests), runs))
        for run_id in runs:
            logged = {(i.tags[0].value, i.dataset.digest) for i in client.get_run(run_id).inputs.dataset_inputs}
            assert logged == set(digests.items())


def test_optuna_sweep_returns_the_logged_objective_and_resumes(train, tracking_server, tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = client_env(MLFLOW_TRACKING_URI=tracking_server.uri, MLFLOW_EXPERIMENT_NAME="e2e-optuna")
    search = ["-m", "hparams_search=lr_mosaic", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_jobs=1",
              *TINY, "train.epochs=1"]
    proc = train(*search, "hydra.sweeper.n_trials=2", env=env)
    assert proc.returncode == 0, why(proc)
    parent, children, rows = sweep_record(tracking_server, "e2e-optuna")
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert "hyp.lr0" in parent.data.tags["sweep_search_space"]

    study = optuna.load_study(study_name="e2e-optuna-lr-mosaic", storage=storage)
    logged = {round(float(c.data.params["hyp.lr0"]), 12): c.data.metrics[OBJECTIVE] for c in children}
    told = {round(t.params["hyp.lr0"], 12): t.value for t in study.trials}
    assert told == pytest.approx(logged)  # what each trial returned is what it logged
    assert parent.data.metrics["best/metrics/mAP_0.5_0.95"] == pytest.approx(study.best_value)
    best = next(c for c in children if c.info.run_id == parent.data.tags["best_run_id"])
    assert float(best.data.params["hyp.lr0"]) == pytest.approx(study.best_params["hyp.lr0"])

    # Interrupted or not, the same study continues: 3 wanted, 2 done, so one more trial runs.
    proc = train(*search, "hydra.sweeper.n_trials=3", env=env)
    assert proc.returncode == 0, why(proc)
    assert len(optuna.load_study(study_name="e2e-optuna-lr-mosaic", storage=storage).trials) == 3
