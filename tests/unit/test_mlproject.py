"""MLproject's parameters reach the Hydra config; bad ones are refused like any other bad input."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from train.tracking.mlflow_internals import load_project

from train.compose import compose_config
from train.config import to_container
from train.mlproject import to_overrides

REPO = Path(__file__).resolve().parents[2]
ENTRY = load_project(str(REPO)).get_entry_point("main")


def command(**params: str) -> list:
    """The argv MLflow runs for these -P params (its own substitution and quoting)."""
    return shlex.split(ENTRY.compute_command(params, storage_dir="/tmp"))


def test_project_name_is_dns_1123_with_room_for_the_job_suffix():
    import re

    name = load_project(str(REPO)).name
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) + 27 <= 63


def test_every_param_reaches_the_config():
    argv = command(epochs="7", batch="4", imgsz="96", model="yolov5s", data="coco128", device="cpu",
                   overrides="hyp.lr0=0.005 '+mlflow.tags.note=two words'")
    assert argv[:3] == ["python", "-m", "train.mlproject"]
    c = to_container(compose_config(to_overrides(argv[3:])))
    assert (c["train"]["epochs"], c["train"]["batch"], c["train"]["imgsz"]) == (7, 4, 96)
    assert (c["model"]["name"], c["data"]["name"], c["train"]["device"]) == ("yolov5s", "coco128", "cpu")
    assert c["hyp"]["lr0"] == 0.005 and c["mlflow"]["tags"]["note"] == "two words"


def test_defaults_leave_the_config_defaults():
    c = to_container(compose_config(to_overrides(command()[3:])))
    assert c["train"]["imgsz"] == 128 and c["train"]["device"] == "" and c["train"]["epochs"] == 20
    assert "train.epochs=20.0" not in to_overrides(command(epochs="20.0")[3:])


def test_mlproject_defaults_are_the_configs():
    """MLproject repeats conf/'s defaults (MLflow logs them as the run's params): they must not drift."""
    from train.mlproject import PARAMETERS

    config = to_container(compose_config([]))
    for name, key in PARAMETERS.items():
        default = ENTRY.parameters[name].default
        if default in ("", None):
            continue  # blank: the config's default applies
        value = config[key] if "." not in key else config[key.split(".")[0]][key.split(".")[1]]
        value = value["name"] if isinstance(value, dict) else value
        assert str(value) == str(default).removesuffix(".0"), f"MLproject's {name} default {default} != {key}={value}"


def _run(argv: list) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv[1:]], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("params,expected", [
    ({"epochs": "abc"}, "error: train.epochs: Value 'abc'"),
    ({"epochs": "1.5"}, "error: train.epochs: Value '1.5'"),
    ({"imgsz": "100"}, "error: train.imgsz: must be a positive multiple of 32"),
    ({"model": "nope"}, "error: model: no option 'nope'"),
    ({"batch": "-3"}, "error: train.batch: must be >= 1"),
    ({"overrides": "'unbalanced"}, "error: MLproject parameters: overrides: No closing quotation"),
    ({"foo": "bar"}, "error: MLproject parameters: unrecognized arguments: --foo bar"),
    ({"overrides": "train.batch=8"}, "error: MLproject parameters: overrides sets train.batch, which has its own "
                                     "parameter: use -P batch=..."),
])
def test_bad_params_one_line_exit_2(params, expected):
    proc = _run(command(**params))
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(expected), line


def test_kubernetes_backend_quoting_is_undone(monkeypatch):
    from mlflow.projects.kubernetes import _get_run_command

    params = {"epochs": "2", "overrides": "hyp.lr0=0.005 '+mlflow.tags.note=two words'"}
    pod_argv = _get_run_command([ENTRY.compute_command(params, storage_dir="/tmp")])  # what the Job's command holds
    assert "''" in pod_argv  # the empty imgsz and device, quoted for a shell that never runs
    monkeypatch.setenv("TRAIN_ARGS_SHELL_QUOTED", "true")
    assert to_overrides(pod_argv[3:]) == to_overrides(command(**params)[3:])
    assert to_overrides(pod_argv[3:])[-2:] == ["hyp.lr0=0.005", "+mlflow.tags.note=two words"]


def test_reproduce_entry_point_runs_train_reproduce():
    entry = load_project(str(REPO)).get_entry_point("reproduce")
    run_id = "ab" * 16
    assert shlex.split(entry.compute_command({"run_id": run_id}, storage_dir="/tmp")) == \
        ["python", "-m", "train.reproduce", run_id, "reproduce.allow_mismatch=false"]


def test_several_gpus_in_one_param_are_one_run_not_a_sweep():
    overrides = to_overrides(command(device="0,1")[3:])
    assert "train.device='0,1'" in overrides
    assert to_container(compose_config(overrides, checked=False))["train"]["device"] == "0,1"
