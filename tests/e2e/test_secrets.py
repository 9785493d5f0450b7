"""Credentials never reach a run's record or the console: canaries planted in the environment (and in the
tracking URI itself) are searched for in everything the run logged, on every path that writes a record:
a single run, a sweep (its parent and its trials), a reproduction, a resume and `train.tracking.sync`.

The login is a real one, on a tracking server with basic auth: the runs only get recorded if the URI's
credentials are used, and must never be written down.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping

import pytest

from tests.conftest import TINY, client_env, train_cli, why
from tests.e2e.test_auth import call
from tests.e2e.test_preemption import GRACE_PERIOD_S, PROBE, launch, only_run_id, wait_for_steps

SWEEP_EXPERIMENT = "e2e-secrets-sweep"


def canary(name: str) -> str:
    return f"canary-{name}-{secrets.token_hex(8)}"


@pytest.fixture(scope="module")
def trainer(auth_tracking_server):
    """A user of the auth server whose password is a canary."""
    login = ("canary-trainer", canary("tracking-password"))
    admin = (auth_tracking_server.secret["MLFLOW_AUTH_ADMIN_USERNAME"],
             auth_tracking_server.secret["MLFLOW_AUTH_ADMIN_PASSWORD"])
    status, _, _ = call(auth_tracking_server.server.uri, "/api/2.0/mlflow/users/create", admin,
                        {"username": login[0], "password": login[1]})
    assert status == 200
    return login


@pytest.fixture(scope="module")
def planted() -> Dict[str, str]:
    """Secrets in the training's environment, as a pod gets them from its Secrets (new values each session)."""
    return {"AWS_ACCESS_KEY_ID": canary("s3-key-id"), "AWS_SECRET_ACCESS_KEY": canary("s3-secret"),
            "AWS_SESSION_TOKEN": canary("s3-session"), "MINIO_ROOT_PASSWORD": canary("minio")}


@pytest.fixture(scope="module")
def canaries(trainer, planted) -> Dict[str, str]:
    """Every value that must appear nowhere, by the name it was planted under."""
    return {"tracking password": trainer[1], **planted}


@pytest.fixture(scope="module")
def login_uri(auth_tracking_server, trainer) -> str:
    """The tracking URI with the login written into it, as a careless user types it on the command line."""
    user, password = trainer
    return auth_tracking_server.server.uri.replace("://", f"://{user}:{password}@", 1)


@pytest.fixture(scope="module")
def reader(auth_tracking_server, trainer):
    """This process's client, logged in as the trainer (MLflow reads the variables at each request)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", trainer[0])
        patch.setenv("MLFLOW_TRACKING_PASSWORD", trainer[1])
        yield auth_tracking_server.server.client()


def everything_logged(client, run_id: str, download_to: Path,
                      expect: Iterable[str] = ("train.log", "config.yaml")) -> Dict[str, bytes]:
    """Params, tags, metric names, run and experiment names, and every artifact's bytes, by where they are."""
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    places = {"run name": run.info.run_name, "params": repr(run.data.params), "tags": repr(run.data.tags),
              "metric names": repr(sorted(run.data.metrics)),
              "experiment": repr((experiment.name, experiment.tags))}
    places = {place: text.encode() for place, text in places.items()}
    folder = Path(client.download_artifacts(run_id, "", str(download_to)))
    files = [p for p in folder.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert set(expect) <= names, f"run {run_id} lacks {set(expect) - names}"
    places.update({f"artifact {p.relative_to(folder)}": p.read_bytes() for p in files})
    return places


def leaks(canaries: Mapping[str, str], places: Mapping[str, bytes]) -> List[str]:
    """'<place>: <canary name>: <the text around it>' for each canary found somewhere."""
    found = []
    for place, data in places.items():
        for name, value in canaries.items():
            at = data.find(value.encode())
            if at >= 0:
                found.append(f"{place}: {name}: {data[max(0, at - 60):at + len(value) + 20]!r}")
    return found


def assert_no_leak(canaries: Mapping[str, str], places: Mapping[str, bytes]) -> None:
    found = leaks(canaries, places)
    assert not found, "credentials leaked:\n" + "\n".join(found)


def console(*outputs) -> bytes:
    """What processes printed: CompletedProcesses, or their (stdout, stderr) texts."""
    texts = [text for out in outputs for text in ((out.stdout, out.stderr) if hasattr(out, "stdout") else out)]
    return "".join(texts).encode()


# --- A single run ------------------------------------------------------------------------------------------------

def test_no_credential_reaches_the_record_or_the_console(auth_tracking_server, trainer, planted, canaries, cache_dir,
                                                        tmp_path, monkeypatch):
    """The login where the pods' Secret puts it (the environment), as a user an admin created through the API:
    the better login for the pods, and trained as that user, not as an admin. The login typed into the tracking
    URI instead is the resume's case below (its first, interrupted run is a single run)."""
    user, password = trainer
    uri = auth_tracking_server.server.uri
    experiment = "e2e-secrets-environment"
    env = client_env(MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password,
                     MLFLOW_EXPERIMENT_NAME=experiment, **planted)
    (tmp_path / "work").mkdir()
    proc = train_cli(tmp_path / "work", cache_dir, [*TINY, "train.epochs=1"], env=env)
    assert proc.returncode == 0, why(proc)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = auth_tracking_server.server.client()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED" and "metrics/mAP_0.5_0.95" in run.data.metrics
    status, _, body = call(uri, "/api/2.0/mlflow/users/current", trainer)
    assert status == 200, body
    current = json.loads(body)["user"]
    assert (current["username"], current["is_admin"]) == (user, False)
    logged = everything_logged(client, run.info.run_id, tmp_path / "downloaded")
    assert_no_leak(canaries, {**logged, "console": console(proc)})


# --- A sweep, and what is made from one of its trials ---------------------------------------------------------------

@dataclass
class Sweep:
    proc: subprocess.CompletedProcess
    work: Path
    parent: object  # mlflow Run
    trials: list  # mlflow Runs, by trial number

    def folder(self, trial) -> Path:
        """The trial's Hydra output folder: train.log, yolov5/, .hydra/."""
        [found] = self.work.glob(f"outputs/multirun/*/*/{trial.data.tags['sweep_trial']}")
        return found


@pytest.fixture(scope="module")
def sweep(reader, planted, login_uri, cache_dir, tmp_path_factory) -> Sweep:
    """Two tiny trials, the login in the tracking URI on the command line, the env canaries planted."""
    work = tmp_path_factory.mktemp("secrets-sweep")
    env = client_env(MLFLOW_EXPERIMENT_NAME=SWEEP_EXPERIMENT, **planted)
    proc = train_cli(work, cache_dir, ["-m", *TINY, "train.epochs=1", "hyp.lr0=0.01,0.02",
                                       f"mlflow.tracking_uri={login_uri}"], env=env)
    assert proc.returncode == 0, why(proc)
    runs = reader.search_runs([reader.get_experiment_by_name(SWEEP_EXPERIMENT).experiment_id])
    seen = [(r.info.run_name, r.info.status, r.data.tags.get("mlflow.parentRunId")) for r in runs]
    [parent] = [r for r in runs if "sweep_overrides" in r.data.tags] or [None]
    assert parent is not None, f"no sweep parent among {seen}"
    trials = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                    key=lambda r: int(r.data.tags["sweep_trial"]))
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials), seen
    assert len(runs) == 3, f"runs beside the sweep's: {seen}"
    return Sweep(proc, work, parent, trials)


def test_a_sweep_records_no_credential_in_its_parent_or_its_trials(sweep, reader, canaries, tmp_path):
    logged = everything_logged(reader, sweep.parent.info.run_id, tmp_path / "parent", expect=["trials.csv"])
    assert sweep.parent.info.status == "FINISHED"
    assert all(t.info.run_id.encode() in logged["artifact sweep/trials.csv"] for t in sweep.trials)
    found = leaks(canaries, {f"parent {place}": data for place, data in logged.items()})
    for trial in sweep.trials:
        logged = everything_logged(reader, trial.info.run_id, tmp_path / trial.info.run_id)
        found += leaks(canaries, {f"trial {trial.data.tags['sweep_trial']} {place}": data
                                  for place, data in logged.items()})
    found += leaks(canaries, {"console": console(sweep.proc)})
    assert not found, "credentials leaked:\n" + "\n".join(found)


def test_a_reproduction_of_a_trial_records_no_credential(sweep, reader, planted, canaries, login_uri, cache_dir,
                                                         tmp_path):
    original = sweep.trials[0].info.run_id
    # --allow-mismatch: the working tree may change between the sweep and now; the reproduction is not the point.
    # It goes first: argparse refuses `<run id> --allow-mismatch <overrides>` (train/reproduce.py uses parse_args).
    proc = subprocess.run([sys.executable, "-m", "train.reproduce", "--allow-mismatch", original,
                           f"mlflow.tracking_uri={login_uri}"], cwd=tmp_path,
                          env={"YOLOV5_MLFLOW_CACHE": str(cache_dir), **client_env(**planted)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, why(proc)
    experiments = [e.experiment_id for e in reader.search_experiments()]
    [copy] = reader.search_runs(experiments, f"tags.reproduces = '{original}'")
    assert copy.info.status == "FINISHED"
    logged = everything_logged(reader, copy.info.run_id, tmp_path / "downloaded")
    assert_no_leak(canaries, {**logged, "console": console(proc)})


def test_a_synced_run_records_no_credential(sweep, reader, auth_tracking_server, planted, canaries, login_uri,
                                            tmp_path):
    """A run folder with a pending record, delivered with the login in --tracking-uri.

    Hydra's .hydra/ files in the folder hold the URI as typed, login included; the folder's log gets the
    environment's secrets appended too: whatever the folder holds, what sync uploads is redacted."""
    folder = shutil.copytree(sweep.folder(sweep.trials[1]), tmp_path / "run")
    with open(folder / "train.log", "a") as log:
        log.write("".join(f"{name}={value}\n" for name, value in planted.items()) + f"tracking {login_uri}\n")
    from train.tracking.spool import PENDING_FILE, EpochPoints, PendingRecord

    experiment_id = reader.create_experiment("e2e-secrets-sync")
    run_id = reader.create_run(experiment_id, run_name="synced").info.run_id
    now = int(time.time() * 1000)
    PendingRecord(tracking_uri=auth_tracking_server.server.uri, run_id=run_id, status="FINISHED",
                  epochs=[EpochPoints(0, now - 2000, {PROBE: 0.1, "train/box_loss": 0.5}),
                          EpochPoints(1, now - 1000, {PROBE: 0.2, "train/box_loss": 0.4})]).save(folder)

    proc = subprocess.run([sys.executable, "-m", "train.tracking.sync", str(folder), "--tracking-uri", login_uri],
                          cwd=tmp_path, env=client_env(**planted), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, why(proc)
    assert not (folder / PENDING_FILE).exists()
    assert reader.get_run(run_id).info.status == "FINISHED"
    assert [m.step for m in reader.get_metric_history(run_id, PROBE)] == [0, 1]
    logged = everything_logged(reader, run_id, tmp_path / "downloaded")
    assert any(place.startswith("artifact config/hydra/") for place in logged)
    assert_no_leak(canaries, {**logged, "console": console(proc)})


# --- A resume ------------------------------------------------------------------------------------------------------

def test_a_resumed_run_records_no_credential(reader, planted, canaries, login_uri, cache_dir, tmp_path):
    """Killed (SIGTERM) after its first epoch, then resumed by `train.resume`: the login in the URI both times."""
    experiment = "e2e-secrets-resume"
    env = client_env(MLFLOW_EXPERIMENT_NAME=experiment, **planted)
    uri = f"mlflow.tracking_uri={login_uri}"
    first = launch(tmp_path, cache_dir, [*TINY, "train.epochs=4", uri], env)  # room to stop it mid-training
    run_id = only_run_id(reader, experiment, first)
    wait_for_steps(reader, run_id, 1, first)
    first.send_signal(signal.SIGTERM)
    printed = first.communicate(timeout=GRACE_PERIOD_S)
    assert first.returncode == 130, printed[1][-3000:]
    assert reader.get_run(run_id).info.status == "KILLED"

    second = train_cli(tmp_path, cache_dir, [f"train.resume={run_id}", uri], env=env)
    assert second.returncode == 0, why(second)
    run = reader.get_run(run_id)
    assert run.info.status == "FINISHED" and "resumed_at_epoch" in run.data.tags
    logged = everything_logged(reader, run_id, tmp_path / "downloaded")
    assert_no_leak(canaries, {**logged, "console": console(printed, second)})


# --- The pending file ------------------------------------------------------------------------------------------------

def test_the_pending_file_never_holds_a_login(tmp_path):
    """What the training keeps locally when the server did not take the whole record (session._finish_record)."""
    from train.errors import RecordIncomplete
    from train.tracking.session import Session, _finish_record
    from train.tracking.spool import PENDING_FILE, EpochPoints, PendingRecord

    password = canary("pending-password")

    class Undelivered:  # the spool of a server that never came back
        last_error = "Connection refused"

        def close(self, timeout_s):
            return [EpochPoints(0, 1, {PROBE: 0.1})]

    session = Session(config={}, data_yaml=tmp_path / "data.yaml", out_dir=tmp_path,
                      tracking_uri=f"http://trainer:{password}@mlflow.example.test:5000", tags={}, run_name="r",
                      run_id="0123456789abcdef")
    with pytest.raises(RecordIncomplete) as raised:
        _finish_record(Undelivered(), None, session, 0, None)
    text = (tmp_path / PENDING_FILE).read_text()
    assert password not in text and password not in str(raised.value)
    record = PendingRecord.load(tmp_path)
    assert record.tracking_uri == "http://mlflow.example.test:5000" and record.run_id == "0123456789abcdef"
