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
from omegaconf import OmegaConf
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from train.errors import ConfigError
from train.redact import redact

CHECKPOINT = "training-output/weights/last.pt"
BEST = "training-output/weights/best.pt"
RESULTS = "training-output/results.csv"
LOG = "logs/train.log"
RECORDED_CONFIG = "config/config.yaml"
# Always this machine's: where it keeps things and how it reaches the server.
LOCAL_KEYS = ("train.resume", "paths", "fetch", "mlflow.tracking_uri", "mlflow.startup_timeout_s",
              "mlflow.delivery_timeout_s", "mlflow.checkpoint_every_epochs", "mlflow.checkpoint_every_minutes",
              "mlflow.system_metrics")
# How this machine trains, not what: the record's unless given on the command line (workers changes the
# augmentations' random streams, so a reproduction keeps the record's unless told otherwise).
MACHINE_KEYS = ("train.device", "train.workers")


@dataclass
class Resumption:
    run_id: str
    config: Dict[str, Any]  # the run's recorded config, with this machine's keys


def _under(key: str, roots: Sequence[str]) -> bool:
    return any(key == root or key.startswith(f"{root}.") for root in roots)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def check_overrides(overrides: Sequence[str], what: str, also: Sequence[str] = ()) -> None:
    """ConfigError unless every override sets a local or machine key (or Hydra's own, or `also`)."""
    allowed = (*LOCAL_KEYS, *MACHINE_KEYS, *also, "hydra")
    changed = [k for k in map(_override_key, overrides) if not _under(k, allowed)]
    if changed:
        raise ConfigError(f"{what}: trains the run's recorded config, so {changed[0]} cannot be given with it "
                          f"(only {', '.join(MACHINE_KEYS)}, paths.* and the mlflow connection settings)")


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def _set(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = copy.deepcopy(value)


def merged(current: Mapping[str, Any], recorded: Mapping[str, Any], overrides: Sequence[str],
           keep: Sequence[str] = LOCAL_KEYS) -> Dict[str, Any]:
    """The recorded config over today's (so keys added since keep their defaults); from today: the `keep` keys
    and the machine keys the command line sets."""
    result = OmegaConf.to_container(OmegaConf.merge(current, recorded))
    given = [k for k in map(_override_key, overrides) if k in MACHINE_KEYS]
    for key in (*keep, *given):
        _set(result, key, _get(current, key))
    return result


def recorded_config(client: MlflowClient, run_id: str) -> Dict[str, Any]:
    return yaml.safe_load(Path(client.download_artifacts(run_id, RECORDED_CONFIG)).read_text())


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
        check_overrides(overrides, "train.resume")
    return Resumption(run_id, merged(config, recorded_config(client, run_id), overrides))


@dataclass
class Checkpoint:
    path: Path  # last.pt, in save_dir/weights
    epoch: int  # the last epoch it holds
    finished: bool  # nothing left to train: its epoch is the last, or YOLOv5 stripped it (training over)


def fetch(tracking_uri: str, run_id: str, save_dir: Path, log_path: Path, epochs: int) -> Checkpoint:
    """The run's last and best checkpoints, results.csv and console log, where YOLOv5 and the log tee go on.

    results.csv can be an epoch ahead of last.pt (uploaded first during training, and a kill can fall between the
    two): its rows past the checkpoint are dropped, to be trained and written again."""
    from train import yolo

    client = MlflowClient(tracking_uri=tracking_uri)
    weights = save_dir / "weights"
    weights.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(client.download_artifacts(run_id, CHECKPOINT, str(save_dir.parent / "resume")))
    last = weights / "last.pt"
    checkpoint.replace(last)
    # best.pt too: YOLOv5 rewrites it only when an epoch beats the best so far, which a resumed run may never do.
    for artifact, target in ((BEST, weights / "best.pt"), (RESULTS, save_dir / "results.csv"), (LOG, log_path)):
        try:
            Path(client.download_artifacts(run_id, artifact, str(save_dir.parent / "resume"))).replace(target)
        except MlflowException:
            pass  # a run killed before its first epoch ended has none of them
    epoch = yolo.checkpoint_epoch(last)
    if epoch == -1:  # stripped: YOLOv5 finished training (killed during its final validation, or after)
        found = yolo.last_row_epoch(save_dir / "results.csv")
        return Checkpoint(last, epochs - 1 if found is None else found, True)
    yolo.keep_rows_through(save_dir / "results.csv", epoch)
    return Checkpoint(last, epoch, epoch + 1 >= epochs)
