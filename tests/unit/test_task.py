"""The Hydra task called in-process, as a plain function: config in, Outcome out, and never a process exit."""

from __future__ import annotations

import os
import signal

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from train.config import CONF_DIR, register_schema
from train.errors import EXIT_BAD_INPUT, Outcome


@pytest.fixture
def task(tmp_path):
    """task(*overrides) -> Outcome, with the process's environment and signal handlers restored afterwards."""
    from train.task import train_and_track

    saved_env, saved_handlers = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def run(*overrides: str) -> Outcome:
        register_schema()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"paths.cache_dir={tmp_path / 'cache'}", *overrides],
                          return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]  # as Hydra hands the task its config: the job's keys only
        return train_and_track(cfg)

    yield run
    os.environ.clear()
    os.environ.update(saved_env)
    for signum, handler in saved_handlers.items():
        signal.signal(signum, handler)


def test_a_missing_dataset_is_an_outcome_not_an_exit(task, tmp_path, capsys):
    (tmp_path / "empty" / "images" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "images" / "val").mkdir(parents=True)
    outcome = task("mlflow.enabled=false", f"data.root={tmp_path / 'empty'}")
    assert outcome.exit_code == EXIT_BAD_INPUT and outcome.run_id == ""
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: data.root: ") and "holds no images" in line


def test_an_unreachable_tracking_server_is_refused_before_any_run(task, capsys):
    import socket

    with socket.socket() as s:  # a port where nothing listens once the socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outcome = task(f"mlflow.tracking_uri=http://127.0.0.1:{port}", "mlflow.startup_timeout_s=1")
    assert outcome.exit_code == 3
    assert capsys.readouterr().err.strip().startswith("error: mlflow.tracking_uri: cannot use")
