"""Continuing an interrupted run from the last checkpoint in its own artifacts.

Two ways in: `train.resume=<run_id>`, and a Kubernetes Job retried with the same MLFLOW_RUN_ID
(the run exists, is not FINISHED, and holds a checkpoint). Either way the run's recorded config is
what trains, so its params stay true; only the keys that describe this machine come from now.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import yaml
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from train.config import ConfigError
from train.tracking.names import redact

CHECKPOINT = "training-output/weights/last.pt"
RESULTS = "training-output/results.csv"
LOG = "logs/train.log"
RECORDED_CONFIG = "config/config.yaml"
# Where this machine keeps things and how it talks to the server: the only keys a resume may change.
MACHINE_KEYS = ("train.resume", "train.device", "train.workers", "paths", "mlflow.tracking_uri",
                "mlflow.startup_timeout_s", "mlflow.delivery_timeout_s")


@dataclass
class Resumption:
    run_id: str
    config: Dict[str, Any]  # the run's recorded config, with this machine's keys


def _is_machine_key(key: str) -> bool:
    return key.startswith("hydra.") or any(key == k or key.startswith(f"{k}.") for k in MACHINE_KEYS)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _set(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = copy.deepcopy(value)


def _merged(current: Mapping[str, Any], recorded: Mapping[str, Any]) -> Dict[str, Any]:
    """The recorded config over today's (so keys added since keep their defaults), machine keys from today."""
    def deep_update(base: Dict[str, Any], update: Mapping[str, Any]) -> Dict[str, Any]:
        for key, value in update.items():
            if isinstance(value, Mapping) and isinstance(base.get(key), dict):
                deep_update(base[key], value)
            else:
                base[key] = copy.deepcopy(value)
        return base

    merged = deep_update(copy.deepcopy(dict(current)), recorded)
    for key in MACHINE_KEYS:
        _set(merged, key, _get(current, key))
    return merged


def _has_checkpoint(client: MlflowClient, run_id: str) -> bool:
    folder = CHECKPOINT.rsplit("/", 1)[0]
    return any(item.path == CHECKPOINT for item in client.list_artifacts(run_id, folder))


def plan(tracking_uri: str, config: Mapping[str, Any], overrides: Sequence[str]) -> Optional[Resumption]:
    """The run to continue, or None to start afresh; ConfigError (one line) when the request cannot hold."""
    explicit = config["train"]["resume"]
    run_id = explicit or os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return None
    key = "train.resume" if explicit else "MLFLOW_RUN_ID"
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"{key}: no run {run_id} at {redact(tracking_uri)}") from None
    if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
        hint = "nothing to resume" if explicit else "unset MLFLOW_RUN_ID to start a new run"
        raise ConfigError(f"{key}: run {run_id} already ended FINISHED; {hint}")
    if not _has_checkpoint(client, run_id):
        if explicit:
            raise ConfigError(f"train.resume: run {run_id} has no checkpoint ({CHECKPOINT}) to resume from")
        return None  # a run `mlflow run` just created: train it from the start
    if explicit:
        changed = [k for k in map(_override_key, overrides) if not _is_machine_key(k)]
        if changed:
            raise ConfigError(f"train.resume: continues the run's recorded config, so {changed[0]} cannot be "
                              f"given with it (only {', '.join(MACHINE_KEYS[1:])})")
    recorded = yaml.safe_load(Path(client.download_artifacts(run_id, RECORDED_CONFIG)).read_text())
    return Resumption(run_id, _merged(config, recorded))


def fetch(tracking_uri: str, run_id: str, save_dir: Path, log_path: Path) -> Path:
    """The run's last checkpoint, results.csv and console log, put where YOLOv5 and the log tee continue them."""
    client = MlflowClient(tracking_uri=tracking_uri)
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(client.download_artifacts(run_id, CHECKPOINT, str(save_dir.parent / "resume")))
    last = weights / "last.pt"
    checkpoint.replace(last)
    for artifact, target in ((RESULTS, save_dir / "results.csv"), (LOG, log_path)):
        try:
            Path(client.download_artifacts(run_id, artifact, str(save_dir.parent / "resume"))).replace(target)
        except MlflowException:
            pass  # a run killed before its first epoch ended has neither
    return last
