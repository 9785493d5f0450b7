"""InBackground (train/tracking/background.py): the record's start written beside training, retried through
outages, and the end of training told whether it all landed."""

from __future__ import annotations

import threading

import pytest

from train.tracking import background
from train.tracking.background import InBackground


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(background, "_RETRY_WAIT_S", (0.001, 0.002))


def until_failed_once(job: InBackground) -> None:
    """However busy the machine: a fixed sleep would race the step's first try."""
    for _ in range(1000):
        if job.last_error:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the step never failed")


def test_steps_run_in_order_off_the_calling_thread_and_wait_says_done():
    ran = []
    caller = threading.current_thread()
    steps = [lambda i=i: ran.append((i, threading.current_thread() is caller)) for i in range(3)]
    assert InBackground("test", steps).wait(5) is None
    assert ran == [(0, False), (1, False), (2, False)]


def test_a_failing_step_is_retried_until_it_lands_and_the_next_waits_for_it():
    calls = []

    def flaky():
        calls.append("flaky")
        if len(calls) < 3:
            raise ConnectionError("Connection refused")

    assert InBackground("test", [flaky, lambda: calls.append("next")]).wait(5) is None
    assert calls == ["flaky", "flaky", "flaky", "next"]


def test_a_step_that_never_lands_is_given_up_at_the_wait_with_its_error_and_tried_no_more():
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError("Connection refused")

    job = InBackground("test", [down, lambda: calls.append("never")])
    until_failed_once(job)
    assert job.wait(0.05) == "ConnectionError: Connection refused"
    tried = len(calls)
    threading.Event().wait(0.05)
    assert len(calls) == tried and "never" not in calls and not job.done


def test_a_refused_request_is_not_asked_again_and_its_line_says_why():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    calls = []

    def refused():
        calls.append(1)
        raise MlflowException("Changing param values is not allowed", error_code=INVALID_PARAMETER_VALUE)

    job = InBackground("test", [refused, lambda: calls.append("never")])
    assert job.wait(5) == "MlflowException: Changing param values is not allowed"
    assert calls == [1]


def test_a_proxys_4xx_while_the_server_restarts_is_retried():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ENDPOINT_NOT_FOUND

    calls = []

    def restarting():
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("404 Not Found (ingress)", error_code=ENDPOINT_NOT_FOUND)

    assert InBackground("test", [restarting]).wait(5) is None
    assert calls == [1, 1, 1]


def test_the_error_kept_has_no_credentials():
    def down():
        raise ConnectionError("cannot reach http://alice:s3cr3t-canary@tracking:5000/api")

    job = InBackground("test", [down])
    until_failed_once(job)
    line = job.wait(0)
    assert "s3cr3t-canary" not in line and "tracking:5000" in line


@pytest.mark.parametrize("landed_before", [False, True])
def test_a_resumed_run_records_its_params_and_lineage_only_if_its_first_attempt_did_not(tmp_path, monkeypatch,
                                                                                         landed_before):
    """The first attempt may die (node loss) before its params and lineage land: the resume records them then."""
    from types import SimpleNamespace

    from mlflow import MlflowClient

    from train.tracking import session as session_module
    from train.tracking.record import RunRecord

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("resume", str(tmp_path / "artifacts"))).info.run_id
    if landed_before:
        client.set_tag(run_id, session_module.START_RECORDED, "true")
    lineage_recorded = []
    monkeypatch.setattr(session_module.lineage, "record", lambda *args: lineage_recorded.append(args[0].run_id))
    config = {"train": {"epochs": 3, "imgsz": 64, "batch": 2, "device": "cpu"}, "data": {"name": "synthetic"},
              "model": {"weights": ""}, "mlflow": {"startup_timeout_s": 5}}
    start = session_module._record_start(RunRecord(client, run_id), config,
                                         SimpleNamespace(run_id=run_id, data_yaml=tmp_path / "data.yaml"), resumed=True)
    assert start.wait(30) is None
    run = client.get_run(run_id)
    if landed_before:
        assert lineage_recorded == [] and "train.epochs" not in run.data.params
    else:
        assert lineage_recorded == [run_id] and run.data.params["train.epochs"] == "3"
        assert run.data.tags[session_module.START_RECORDED] == "true"
