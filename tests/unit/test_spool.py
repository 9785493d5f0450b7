"""MetricSpool (train/tracking/spool.py) against a real MlflowClient and a SQLite store in the test's folder.

An outage is a client whose log_batch fails while a switch is on: before the request reaches the store, or after
the store kept the points (the answer lost on its way back), which is what makes resending interesting.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import List

import pytest
from mlflow import MlflowClient

from train.tracking import spool as spool_module
from train.tracking.spool import PENDING_FILE, EpochPoints, MetricSpool, PendingRecord

WAIT_S = 5  # for a step that takes milliseconds; only a failing test waits this long


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module: creating its tables takes seconds, a run in it milliseconds."""
    folder = tmp_path_factory.mktemp("spool-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("spool", artifact_location=str(folder / "artifacts"))
    return uri


@pytest.fixture
def run_id(store_uri) -> str:
    client = MlflowClient(tracking_uri=store_uri)
    experiment_id = client.get_experiment_by_name("spool").experiment_id
    return client.create_run(experiment_id).info.run_id


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(spool_module, "_RETRY_WAIT_S", (0.001, 0.002))


class OutageClient(MlflowClient):
    """The real client; while `down` is set, log_batch fails, before the store sees it or (`lost_answer`) after."""

    def __init__(self, tracking_uri: str) -> None:
        super().__init__(tracking_uri=tracking_uri)
        self.down = threading.Event()
        self.lost_answer = False
        self.fail_next = 0  # fail this many calls, then recover by itself
        self.attempts = 0
        self.delivered: List[List[int]] = []  # the steps of each request the store acknowledged, as sent
        self.held = threading.Event()  # set: the next request waits in flight until `release` is set
        self.in_flight = threading.Event()
        self.release = threading.Event()

    def log_batch(self, run_id, metrics=(), *args, **kwargs):
        self.attempts += 1
        failing = self.down.is_set() or self.fail_next > 0  # as the request leaves
        self.fail_next = max(0, self.fail_next - 1)
        if self.held.is_set():
            self.held.clear()
            self.in_flight.set()
            assert self.release.wait(WAIT_S)
        if failing and not self.lost_answer:
            raise ConnectionError("Connection refused\n(more detail on a second line)")
        result = super().log_batch(run_id, metrics, *args, **kwargs)
        if failing:
            raise ConnectionError("Read timed out")
        self.delivered.append(list(dict.fromkeys(m.step for m in metrics)))
        return result


@pytest.fixture
def client(store_uri, monkeypatch) -> OutageClient:
    outage = OutageClient(store_uri)
    monkeypatch.setattr(spool_module, "MlflowClient", lambda tracking_uri: outage)
    return outage


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        time.sleep(0.001)


def _history(store_uri: str, run_id: str, key: str) -> List[tuple]:
    points = MlflowClient(tracking_uri=store_uri).get_metric_history(run_id, key)
    return sorted((p.step, p.timestamp, p.value) for p in points)


def _epoch(step: int) -> dict:
    return {"metrics/mAP_0.5": 0.1 * step, "train/box_loss": 1.0 / (step + 1)}


def test_each_epoch_is_delivered_in_order_with_its_epoch_end_timestamp(client, store_uri, run_id):
    spool = MetricSpool(store_uri, run_id)
    put_at = []
    for step in range(5):
        before = int(time.time() * 1000)
        spool.put(step, _epoch(step))
        put_at.append((before, int(time.time() * 1000)))
        _wait_for(lambda: len(client.delivered) == step + 1, f"epoch {step}")  # one epoch at a time

    assert spool.close(WAIT_S) == []
    assert client.delivered == [[0], [1], [2], [3], [4]]
    for key in _epoch(0):
        history = _history(store_uri, run_id, key)
        assert [(step, value) for step, _, value in history] == [(s, _epoch(s)[key]) for s in range(5)]
        assert all(low <= timestamp <= high for (_, timestamp, _), (low, high) in zip(history, put_at))
    assert spool.failures == 0 and not spool._thread.is_alive()


def test_what_queued_up_during_an_outage_goes_in_one_request_with_the_original_timestamps(client, store_uri, run_id):
    client.down.set()
    spool = MetricSpool(store_uri, run_id)
    spool.put(0, _epoch(0))
    _wait_for(lambda: spool.failures >= 1, "the first failure")  # epoch 0 is in the request being retried
    for step in (1, 2, 3):
        spool.put(step, _epoch(step))
    put_done = int(time.time() * 1000)
    time.sleep(0.02)  # the server comes back later than the epochs ended
    client.down.clear()

    assert spool.close(WAIT_S) == []
    assert client.delivered == [[0], [1, 2, 3]]
    history = _history(store_uri, run_id, "metrics/mAP_0.5")
    assert [step for step, _, _ in history] == [0, 1, 2, 3]
    assert all(timestamp <= put_done for _, timestamp, _ in history)
    assert spool.last_error == "Connection refused"  # the first line of what the client raised


@pytest.mark.parametrize("lost_answer", [False, True], ids=["request-lost", "answer-lost"])
def test_retries_through_failures_without_losing_or_duplicating_a_point(client, store_uri, run_id, lost_answer):
    client.lost_answer = lost_answer  # True: the store kept every failed request's points, and gets them again
    spool = MetricSpool(store_uri, run_id)
    for step in range(6):
        client.fail_next = 3 if step % 2 else 0  # odd epochs: three failures in a row first
        spool.put(step, _epoch(step))
        _wait_for(lambda: sum(len(steps) for steps in client.delivered) == step + 1, f"epoch {step}")

    assert spool.close(WAIT_S) == []
    assert spool.failures == 9 and client.attempts == 6 + 9
    for key in _epoch(0):
        history = _history(store_uri, run_id, key)
        assert [(step, value) for step, _, value in history] == [(s, _epoch(s)[key]) for s in range(6)]


def test_close_returns_within_its_timeout_what_the_server_never_acknowledged(client, store_uri, run_id):
    spool = MetricSpool(store_uri, run_id)
    spool.put(0, _epoch(0))
    spool.put(1, _epoch(1))
    _wait_for(lambda: sum(len(steps) for steps in client.delivered) == 2, "epochs 0 and 1")
    client.down.set()
    spool.put(2, _epoch(2))
    spool.put(3, _epoch(3))

    returned: list = []  # close() runs aside: one that ignored its timeout fails the test instead of hanging it
    closing = threading.Thread(target=lambda: returned.extend([spool.close(0.2), time.monotonic()]))
    started = time.monotonic()
    closing.start()
    closing.join(WAIT_S)
    assert not closing.is_alive(), f"close(0.2) still waiting after {WAIT_S} s"
    owed, elapsed = returned[0], returned[1] - started

    assert 0.2 <= elapsed < 1.0
    assert [(p.step, p.metrics) for p in owed] == [(2, _epoch(2)), (3, _epoch(3))]
    assert all(isinstance(p.timestamp_ms, int) for p in owed)
    assert [step for step, _, _ in _history(store_uri, run_id, "metrics/mAP_0.5")] == [0, 1]
    assert spool.failures >= 1 and spool.last_error == "Connection refused"
    client.down.clear()  # let the retrying thread deliver and end instead of spinning past the test
    spool._thread.join(WAIT_S)
    assert not spool._thread.is_alive()


def test_an_epoch_put_while_another_is_in_flight_stays_owed_until_it_is_delivered_itself(client, store_uri, run_id):
    client.held.set()
    spool = MetricSpool(store_uri, run_id)
    spool.put(0, _epoch(0))
    assert client.in_flight.wait(WAIT_S)  # epoch 0's request is on its way
    spool.put(1, _epoch(1))
    client.down.set()  # epoch 0 gets through, then the server goes away
    client.release.set()
    _wait_for(lambda: client.delivered == [[0]] and spool.failures >= 1, "epoch 0, then a failure")

    assert [p.step for p in spool.close(0.05)] == [1]
    client.down.clear()
    spool._thread.join(WAIT_S)
    assert client.delivered == [[0], [1]]


def test_delivered_through_says_when_the_server_holds_every_epoch_up_to_one(client, store_uri, run_id):
    """What the checkpoint uploader waits for (train/tracking/checkpoints.py)."""
    spool = MetricSpool(store_uri, run_id)
    assert spool.delivered_through(5)  # nothing owed
    spool.put(0, _epoch(0))
    _wait_for(lambda: spool.delivered_through(0), "epoch 0")
    client.down.set()
    spool.put(1, _epoch(1))
    assert spool.delivered_through(0) and not spool.delivered_through(1) and not spool.delivered_through(7)
    client.down.clear()
    _wait_for(lambda: spool.delivered_through(1), "epoch 1")
    assert spool.close(WAIT_S) == []


def test_close_with_nothing_put_returns_at_once(client, store_uri, run_id):
    spool = MetricSpool(store_uri, run_id)
    started = time.monotonic()
    assert spool.close(WAIT_S) == []
    assert time.monotonic() - started < 0.5 and client.attempts == 0


def test_a_pending_record_survives_save_and_load(tmp_path: Path):
    record = PendingRecord(tracking_uri="http://127.0.0.1:5000", run_id="0123456789abcdef0123456789abcdef",
                           status="FINISHED",
                           epochs=[EpochPoints(3, 1_700_000_000_123, {"metrics/mAP_0.5_0.95": 0.25, "x/lr0": 0.01}),
                                   EpochPoints(4, 1_700_000_060_456, {"metrics/mAP_0.5_0.95": 0.5, "x/lr0": 0.009})],
                           outputs_uploaded=True)

    path = record.save(tmp_path)

    assert path == tmp_path / PENDING_FILE
    loaded = PendingRecord.load(tmp_path)
    assert loaded == record
    assert all(isinstance(e, EpochPoints) for e in loaded.epochs)
    assert [m.key for m in loaded.epochs[1].as_metrics()] == ["metrics/mAP_0.5_0.95", "x/lr0"]
    assert {(m.step, m.timestamp, m.value) for m in loaded.epochs[1].as_metrics()} == {
        (4, 1_700_000_060_456, 0.5), (4, 1_700_000_060_456, 0.009)}


def test_an_empty_pending_record_round_trips_with_its_defaults(tmp_path: Path):
    record = PendingRecord(tracking_uri="sqlite:///x.db", run_id="ab" * 16, status="FAILED")
    record.save(tmp_path)
    assert PendingRecord.load(tmp_path) == record and record.epochs == [] and record.outputs_uploaded is False
