"""CheckpointUploader (train/tracking/checkpoints.py) with a fake transport; results.csv trimmed on resume; the
attempt tags (train/tracking/attempts.py); the two keys' range checks.

The transport records what it is given and can hold a request in flight (`hold`) or fail (`fail_next`), so each
test sees exactly which files and tags would have reached the server, in which order."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import List, Tuple

import pytest

from train.compose import compose_config
from train.errors import ConfigError
from train.tracking import attempts
from train.tracking import checkpoints as checkpoints_module
from train.tracking.checkpoints import CheckpointUploader
from train.yolo import keep_rows_through, last_row_epoch

WAIT_S = 5  # for a step that takes milliseconds; only a failing test waits this long


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(checkpoints_module, "_RETRY_WAIT_S", (0.001, 0.002))


class FakeTransport:
    def __init__(self) -> None:
        self.sent: List[Tuple[str, str, str]] = []  # (artifact dir, file name, content) as uploaded
        self.tags: List[int] = []
        self.log: List[str] = []  # every call that landed, in order: "<dir>/<name>" or "tag <epoch>"
        self.hold = threading.Event()  # set: the next upload waits in flight until `release` is set
        self.in_flight = threading.Event()
        self.release = threading.Event()
        self.fail_next = 0
        self.lock = threading.Lock()

    def upload(self, path: Path, artifact_dir: str) -> None:
        if self.hold.is_set():
            self.hold.clear()
            self.in_flight.set()
            assert self.release.wait(WAIT_S)
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("Connection refused")
        with self.lock:
            self.sent.append((artifact_dir, path.name, path.read_text()))
            self.log.append(f"{artifact_dir}/{path.name}")

    def uploaded(self, epoch: int) -> None:
        with self.lock:
            self.tags.append(epoch)
            self.log.append(f"tag {epoch}")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Run:
    """A run folder as YOLOv5 and the console tee leave it, its files' contents naming the epoch that wrote them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.save_dir = root / "yolov5"
        (self.save_dir / "weights").mkdir(parents=True)
        self.log = root / "train.log"

    def epoch(self, epoch: int, best: bool = False) -> None:
        (self.save_dir / "results.csv").write_text(f"results {epoch}")
        self.log.write_text(f"log {epoch}")
        (self.save_dir / "weights" / "last.pt").write_text(f"last {epoch}")
        if best:
            (self.save_dir / "weights" / "best.pt").write_text(f"best {epoch}")

    def uploader(self, transport, every_epochs=1, every_minutes=0.0, start_epoch=0, clock=None) -> CheckpointUploader:
        return CheckpointUploader(transport, self.save_dir, self.log, self.root / checkpoints_module.STAGING,
                                  every_epochs, every_minutes, start_epoch, **({"clock": clock} if clock else {}))


def end_of_epoch(run: Run, uploader: CheckpointUploader, epoch: int, best: bool = False) -> None:
    run.epoch(epoch, best)
    uploader.on_model_save(run.save_dir / "weights" / "last.pt", epoch, False, 0.5, 0.5)


def wait_for(condition, what: str) -> None:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.005)):
        if condition():
            return
        done.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def run(tmp_path) -> Run:
    return Run(tmp_path)


# Due-ness ----------------------------------------------------------------------------------------------------------

def test_every_n_epochs_counts_from_the_first_epoch_trained(run):
    uploader = run.uploader(FakeTransport(), every_epochs=3)
    due = []
    for epoch in range(9):
        if uploader.due(epoch):
            due.append(epoch)
            uploader._last_epoch = epoch  # what a snapshot does
    assert due == [2, 5, 8]  # three epochs trained before each upload, the first included


def test_a_resumed_run_counts_from_where_it_resumed(run):
    uploader = run.uploader(FakeTransport(), every_epochs=2, start_epoch=7)
    assert [e for e in range(7, 10) if uploader.due(e)] == [8, 9]  # no snapshot taken between, so 9 is due too


def test_every_m_minutes_since_the_last_upload(run):
    clock = Clock()
    transport = FakeTransport()
    uploader = run.uploader(transport, every_epochs=0, every_minutes=2, clock=clock)
    clock.now += 100
    end_of_epoch(run, uploader, 0)
    assert not uploader.due(1)
    clock.now += 21  # 121 s since training started
    end_of_epoch(run, uploader, 1)
    clock.now += 119
    end_of_epoch(run, uploader, 2)
    clock.now += 1
    end_of_epoch(run, uploader, 3)
    wait_for(lambda: transport.tags == [1, 3], "epochs 1 and 3")
    assert uploader.stop(WAIT_S)


def test_either_interval_makes_an_upload_due(run):
    clock = Clock()
    uploader = run.uploader(FakeTransport(), every_epochs=10, every_minutes=1, clock=clock)
    assert not uploader.due(0)
    clock.now += 60
    assert uploader.due(0)
    assert uploader.due(9)


def test_both_off_registers_nothing(run):
    registered = []

    class Callbacks:
        def register_action(self, hook, name, callback):
            registered.append(hook)

    run.uploader(FakeTransport(), every_epochs=0, every_minutes=0).register(Callbacks())
    assert registered == []
    run.uploader(FakeTransport()).register(Callbacks())
    assert registered == ["on_model_save"]


# What one upload sends ---------------------------------------------------------------------------------------------

def test_results_csv_goes_before_the_checkpoint_and_the_tag_after_everything(run):
    transport = FakeTransport()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0, best=True)
    wait_for(lambda: transport.tags == [0], "epoch 0")
    assert uploader.stop(WAIT_S)
    assert transport.log == ["training-output/results.csv", "logs/train.log", "training-output/weights/best.pt",
                             "training-output/weights/last.pt", "tag 0"]
    assert [content for *_, content in transport.sent] == ["results 0", "log 0", "best 0", "last 0"]
    assert not (run.root / checkpoints_module.STAGING).exists()  # the snapshots are cleaned up


def test_the_snapshot_is_a_copy_taken_at_the_epoch_end(run):
    """YOLOv5 rewrites last.pt at the next epoch's end while the upload may still be under way."""
    transport = FakeTransport()
    transport.hold.set()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0)
    assert transport.in_flight.wait(WAIT_S)
    run.epoch(1)  # the files change under the upload (no snapshot: this epoch is not reported)
    transport.release.set()
    wait_for(lambda: transport.tags == [0], "epoch 0")
    assert uploader.stop(WAIT_S)
    assert [content for *_, content in transport.sent] == ["results 0", "log 0", "last 0"]


def test_best_pt_only_when_it_changed_since_the_last_upload(run):
    transport = FakeTransport()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0, best=True)
    wait_for(lambda: transport.tags == [0], "epoch 0")
    end_of_epoch(run, uploader, 1)  # not better: best.pt unchanged
    wait_for(lambda: transport.tags == [0, 1], "epoch 1")
    end_of_epoch(run, uploader, 2, best=True)
    wait_for(lambda: transport.tags == [0, 1, 2], "epoch 2")
    assert uploader.stop(WAIT_S)
    assert [content for _, name, content in transport.sent if name == "best.pt"] == ["best 0", "best 2"]


def test_the_checkpoint_waits_for_its_epochs_metrics_to_reach_the_server(run):
    """A resume from it would not log them again: they would be missing from the run's history for good."""
    delivered = threading.Event()
    transport = FakeTransport()
    uploader = CheckpointUploader(transport, run.save_dir, run.log, run.root / checkpoints_module.STAGING, 1, 0,
                                  metrics_delivered=lambda epoch: delivered.is_set())
    end_of_epoch(run, uploader, 0)
    threading.Event().wait(0.2)
    assert transport.log == []
    delivered.set()
    wait_for(lambda: transport.tags == [0], "epoch 0")
    assert uploader.stop(WAIT_S)


# Latest wins -------------------------------------------------------------------------------------------------------

def test_a_newer_snapshot_replaces_the_one_waiting_never_a_queue(run):
    transport = FakeTransport()
    transport.hold.set()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0, best=True)
    assert transport.in_flight.wait(WAIT_S)  # epoch 0's upload is in flight
    for epoch in (1, 2, 3):
        end_of_epoch(run, uploader, epoch)  # each replaces the one before it, waiting
    snapshots = [p for p in (run.root / checkpoints_module.STAGING).iterdir()]
    assert len(snapshots) == 2  # the one in flight and the newest; the dropped ones' copies are gone
    transport.release.set()
    wait_for(lambda: transport.tags == [0, 3], "epochs 0 and 3")
    assert [content for *_, content in transport.sent if content.startswith("last")] == ["last 0", "last 3"]
    assert uploader.stop(WAIT_S)


def test_a_best_pt_whose_snapshot_was_dropped_goes_with_the_next(run):
    transport = FakeTransport()
    transport.hold.set()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0)
    assert transport.in_flight.wait(WAIT_S)
    end_of_epoch(run, uploader, 1, best=True)  # waits, then is replaced by epoch 2's, where best.pt is unchanged
    end_of_epoch(run, uploader, 2)
    transport.release.set()
    wait_for(lambda: transport.tags == [0, 2], "epochs 0 and 2")
    assert ("training-output/weights", "best.pt", "best 1") in transport.sent
    assert uploader.stop(WAIT_S)


def test_an_outage_is_retried_and_a_newer_snapshot_wins_over_a_failing_one(run):
    transport = FakeTransport()
    transport.fail_next = 3
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0)
    wait_for(lambda: transport.tags == [0], "epoch 0 after the outage")
    assert uploader.failures == 3 and "Connection refused" in uploader.last_error

    transport.fail_next = 10 ** 6  # down for good
    end_of_epoch(run, uploader, 1)
    wait_for(lambda: uploader.failures > 10, "retries")
    end_of_epoch(run, uploader, 2)
    transport.fail_next = 0  # back
    wait_for(lambda: transport.tags[-1:] == [2], "epoch 2")
    assert transport.tags == [0, 2]  # epoch 1 was given up for epoch 2, not sent after it
    assert uploader.stop(WAIT_S)


# Stopping before the final upload ----------------------------------------------------------------------------------

def test_stop_drops_what_waits_and_waits_for_the_one_in_flight(run):
    transport = FakeTransport()
    transport.hold.set()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0)
    assert transport.in_flight.wait(WAIT_S)
    end_of_epoch(run, uploader, 1)  # waiting
    threading.Timer(0.2, transport.release.set).start()
    assert uploader.stop(WAIT_S) is True  # returned after the one in flight ended
    assert transport.log == ["training-output/results.csv"]  # its first file landed; nothing after stop
    assert 1 not in transport.tags and not (run.root / checkpoints_module.STAGING).exists()
    end_of_epoch(run, uploader, 2)  # a late epoch end is ignored
    assert transport.log == ["training-output/results.csv"]


def test_an_upload_in_flight_past_the_bound_is_abandoned_and_writes_nothing_after(run):
    transport = FakeTransport()
    transport.hold.set()
    uploader = run.uploader(transport)
    end_of_epoch(run, uploader, 0)
    assert transport.in_flight.wait(WAIT_S)
    assert uploader.stop(0.05) is False  # still in flight: the caller goes on with the final upload
    final = len(transport.log)
    transport.release.set()  # the stale request ends after the final upload began
    uploader._thread.join(WAIT_S)
    assert transport.log[final:] == ["training-output/results.csv"]  # at most the request that was in flight
    assert transport.tags == []


def test_stop_without_any_upload_is_immediate(run):
    uploader = run.uploader(FakeTransport())
    assert uploader.stop(0) is True


def test_a_failing_copy_skips_the_epoch_and_training_goes_on(run, capsys):
    transport = FakeTransport()
    uploader = run.uploader(transport, every_epochs=1)
    (run.root / checkpoints_module.STAGING).write_text("not a folder")  # the snapshot cannot be made
    end_of_epoch(run, uploader, 0)
    assert "checkpoint upload skipped at epoch 0" in capsys.readouterr().out
    (run.root / checkpoints_module.STAGING).unlink()
    end_of_epoch(run, uploader, 1)
    wait_for(lambda: transport.tags == [1], "epoch 1")
    assert uploader.stop(WAIT_S)


# results.csv on resume ---------------------------------------------------------------------------------------------

HEADER = "               epoch,      train/box_loss,   metrics/mAP_0.5\n"


def rows(*epochs: int) -> str:
    return "".join(f"{e:>20},{0.1 * e:>20.5f},{0.01 * e:>20.5f}\n" for e in epochs)


def test_rows_newer_than_the_checkpoint_are_dropped(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + rows(0, 1, 2, 3))  # uploaded at epoch 3's end, before last.pt (still epoch 2's)
    keep_rows_through(csv, 2)
    assert csv.read_text() == HEADER + rows(0, 1, 2)
    assert last_row_epoch(csv) == 2
    keep_rows_through(csv, 2)  # already in step: unchanged
    assert csv.read_text() == HEADER + rows(0, 1, 2)


def test_trimming_leaves_the_header_of_a_file_without_rows_and_ignores_a_missing_file(tmp_path):
    csv = tmp_path / "results.csv"
    csv.write_text(HEADER + rows(0))
    keep_rows_through(csv, -1)
    assert csv.read_text() == HEADER and last_row_epoch(csv) is None
    keep_rows_through(tmp_path / "missing.csv", 3)
    assert last_row_epoch(tmp_path / "missing.csv") is None


# Attempts ----------------------------------------------------------------------------------------------------------

def test_the_first_attempt_and_a_run_mlflow_run_created():
    env = {"HOSTNAME": "laptop"}
    assert attempts.tags(None, False, None, env) == {"attempt": "1", "attempt.1.pod": "laptop"}
    created = attempts.Before("RUNNING", None, "")  # `mlflow run` made it; nothing trained yet
    pod = {"POD_NAME": "job-abc12", "HOSTNAME": "job-abc12", "NODE_NAME": "gpu-node-3"}
    assert attempts.tags(created, False, None, pod) == {"attempt": "1", "attempt.1.pod": "job-abc12",
                                                       "attempt.1.node": "gpu-node-3"}


@pytest.mark.parametrize("status,says", [
    ("RUNNING", "lost without a word (SIGKILL: node loss or out of memory); continued from the checkpoint uploaded "
                "at epoch 4"),
    ("KILLED", "KILLED: stopped by a signal (eviction, preemption, deletion) with its checkpoint at epoch 4"),
    ("FAILED", "FAILED: RuntimeError: boom; continued from its checkpoint at epoch 4"),
])
def test_a_retry_says_how_the_previous_attempt_ended(status, says):
    before = attempts.Before(status, 2, "RuntimeError: boom")
    tags = attempts.tags(before, True, 4, {"NODE_NAME": "node-b"})
    assert tags == {"attempt": "3", "attempt.3.node": "node-b", "attempt.2.ended": says}


def test_a_retry_before_any_checkpoint_and_a_run_from_before_attempts_were_counted():
    lost_early = attempts.tags(attempts.Before("RUNNING", 1, ""), False, None, {})
    assert lost_early["attempt"] == "2" and "before any checkpoint was uploaded" in lost_early["attempt.1.ended"]
    old_run = attempts.tags(attempts.Before("KILLED", None, ""), True, 7, {})  # resumed: it trained before
    assert old_run == {"attempt": "2", "attempt.1.ended": attempts.ENDED["KILLED"].format(k=7)}


# The keys ----------------------------------------------------------------------------------------------------------

def test_the_defaults_upload_every_5_minutes():
    m = compose_config([])["mlflow"]
    assert m["checkpoint_every_epochs"] == 0 and m["checkpoint_every_minutes"] == 5


@pytest.mark.parametrize("override,message", [
    ("mlflow.checkpoint_every_epochs=-1", "mlflow.checkpoint_every_epochs: must be >= 0 (0: off), got -1"),
    ("mlflow.checkpoint_every_minutes=-0.5", "mlflow.checkpoint_every_minutes: must be >= 0 (0: off), got -0.5"),
    ("mlflow.checkpoint_every_epochs=1.5", "mlflow.checkpoint_every_epochs: Value '1.5' of type 'float' could not be "
                                           "converted to Integer"),
])
def test_bad_values_are_refused_in_one_line(override, message):
    with pytest.raises(ConfigError) as raised:
        compose_config([override])
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_the_log_line_says_what_the_uploads_did_and_the_benchmark_reads_it(run):
    from bench.checkpoints import _SUMMARY

    transport = FakeTransport()
    uploader = run.uploader(transport)
    assert uploader.summary() == "Checkpoint uploads during training: none"
    for epoch in range(3):
        end_of_epoch(run, uploader, epoch)
        wait_for(lambda: transport.tags[-1:] == [epoch], f"epoch {epoch}")
    assert uploader.stop(WAIT_S)
    line = uploader.summary()
    assert line.startswith("Checkpoint uploads during training: 3 snapshots (") and "3 uploaded, the last at epoch 2" \
        in line
    found = _SUMMARY.search(line)
    assert found and found.group(1) == "3" and found.group(4) == "3"
