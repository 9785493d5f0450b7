"""Credentials never reach a run's record or the console: canaries planted in the environment (and in the
tracking URI itself) are searched for in everything the run logged."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from tests.conftest import TINY, client_env, train_cli, why
from tests.e2e.test_auth import call


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


def everything_logged(client, run_id: str, download_to: Path) -> bytes:
    """Params, tags, metric names, run and experiment names, and every artifact's bytes."""
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    text = repr((run.info.run_name, run.data.params, run.data.tags, sorted(run.data.metrics),
                 experiment.name, experiment.tags)).encode()
    folder = Path(client.download_artifacts(run_id, "", str(download_to)))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert any(p.name == "train.log" for p in files) and any(p.name == "config.yaml" for p in files)
    return text + b"".join(p.read_bytes() for p in files)


@pytest.mark.parametrize("password_in", ["environment", "tracking URI"])
def test_no_credential_reaches_the_record_or_the_console(password_in, auth_tracking_server, trainer, cache_dir,
                                                        tmp_path, monkeypatch):
    user, password = trainer
    planted = {"AWS_ACCESS_KEY_ID": canary("s3-key-id"), "AWS_SECRET_ACCESS_KEY": canary("s3-secret"),
               "AWS_SESSION_TOKEN": canary("s3-session"), "MINIO_ROOT_PASSWORD": canary("minio")}
    uri = auth_tracking_server.server.uri
    experiment = f"e2e-secrets-{password_in.split()[-1].lower()}"
    if password_in == "environment":
        env = client_env(MLFLOW_TRACKING_URI=uri, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password,
                         MLFLOW_EXPERIMENT_NAME=experiment, **planted)
        overrides = [*TINY, "train.epochs=1"]
    else:  # the command line, where a careless user puts it: Hydra records overrides in several places
        env = client_env(MLFLOW_EXPERIMENT_NAME=experiment, **planted)
        overrides = [*TINY, "train.epochs=1", f"mlflow.tracking_uri={uri.replace('://', f'://{user}:{password}@')}"]
    (tmp_path / "work").mkdir()
    proc = train_cli(tmp_path / "work", cache_dir, overrides, env=env)
    assert proc.returncode == 0, why(proc)

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = auth_tracking_server.server.client()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    logged = everything_logged(client, run.info.run_id, tmp_path / "downloaded")
    console = (proc.stdout + proc.stderr).encode()
    for value in [password, *planted.values()]:
        assert value.encode() not in logged, f"{value} is in the run's record"
        assert value.encode() not in console, f"{value} is on the console"
