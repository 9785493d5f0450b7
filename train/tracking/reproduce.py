"""Training a run again from its record alone: its recorded config, checked against today's code and data.

The code version (commit, and the uncommitted diff if there was one) and each split's content
digest must match the run's, or the reproduction is refused in one line unless
`reproduce.allow_mismatch=true`. The new run is tagged `reproduces=<run id>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from train.data import digests
from train.errors import ConfigError
from train.tracking import lineage
from train.redact import redact
from train.tracking.resume import LOCAL_KEYS, check_overrides, merged, recorded_config

if TYPE_CHECKING:
    from train.model.weights import StartingWeights

# Besides this machine's keys, a reproduction names itself and says what it reproduces.
KEEP = (*LOCAL_KEYS, "reproduce", "mlflow.run_name")


@dataclass
class Reproduction:
    run_id: str
    config: Dict[str, Any]
    digests: Dict[str, str]  # context -> the original's dataset digest
    weights_sha256: str  # of the original's starting weights; '' when it trained from scratch
    allow_mismatch: bool
    run_name: str  # the new run's: reproduce-<the original's name>


def _refuse_unless(allowed: bool, message: str) -> None:
    if not allowed:
        raise ConfigError(f"{message} (python -m train.reproduce --allow-mismatch to train anyway)")
    print(f"warning: {message}; training anyway (--allow-mismatch)")


def _check_code(client: MlflowClient, run, allowed: bool) -> None:
    tags = run.data.tags
    recorded = tags.get("git.commit") or tags.get("mlflow.source.git.commit")
    now = lineage.code_version()
    if recorded is None or now is None:
        _refuse_unless(allowed, "code: the run or this checkout has no git commit to compare")
        return
    if now.commit != recorded:
        _refuse_unless(allowed, f"code: run {run.info.run_id} was trained at commit {recorded[:12]}, "
                                f"this checkout is at {now.commit[:12]}")
        return
    recorded_diff = ""
    if tags.get("git.dirty") == "true":
        recorded_diff = Path(client.download_artifacts(run.info.run_id, "code/git-diff.patch")).read_text()
    if now.diff != recorded_diff:
        where = "its diff is the artifact code/git-diff.patch" if recorded_diff else "it was trained from a clean tree"
        _refuse_unless(allowed, f"code: this checkout's uncommitted changes differ from the run's ({where})")


def plan(tracking_uri: str, config: Mapping[str, Any], overrides: Sequence[str]) -> Reproduction:
    run_id = config["reproduce"]["run_id"]
    check_overrides(overrides, "reproduce.run_id", also=KEEP)
    allowed = config["reproduce"]["allow_mismatch"]
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"reproduce.run_id: no run {run_id} at {redact(tracking_uri)}") from None
    _check_code(client, run, allowed)
    digests = {tag.value: item.dataset.digest for item in run.inputs.dataset_inputs for tag in item.tags
               if tag.key == "mlflow.data.context"}
    recorded = merged(config, recorded_config(client, run_id), overrides, KEEP)
    _pin_model_version(recorded, run.data.tags)
    return Reproduction(run_id, recorded, digests, run.data.tags.get("weights.sha256", ""), allowed,
                        f"reproduce-{run.info.run_name}")


def _pin_model_version(config: Dict[str, Any], tags: Mapping[str, str]) -> None:
    """models:/<name>@<alias> started the run from the version the alias named then: reproduce from that one."""
    weights = config["model"]["weights"]
    if weights.startswith("models:/") and "@" in weights and tags.get("weights.model_version"):
        config["model"]["weights"] = f"models:/{tags['weights.model_name']}/{tags['weights.model_version']}"


def check_data(reproduction: Reproduction, data_yaml: Path) -> None:
    now = digests(data_yaml, Path(reproduction.config["paths"]["cache_dir"]))
    for context, digest in reproduction.digests.items():
        if now.get(context) != digest:
            _refuse_unless(reproduction.allow_mismatch,
                           f"data: the {context} split's content digest is {now.get(context)}, "
                           f"run {reproduction.run_id} trained on {digest}")


def check_weights(reproduction: Reproduction, weights: Optional["StartingWeights"]) -> None:
    now = weights.sha256 if weights else ""
    if reproduction.weights_sha256 and now != reproduction.weights_sha256:
        _refuse_unless(reproduction.allow_mismatch,
                       f"model.weights: {weights.uri if weights else 'none'} is sha256 {now[:12] or '-'}, run "
                       f"{reproduction.run_id} started from {reproduction.weights_sha256[:12]}")


def metric_differences(client: MlflowClient, original: str, reproduction: str) -> List[Tuple[str, float, float, float]]:
    """(metric, original's last value, reproduction's last value, largest |difference| at any epoch), for the
    training's metrics: the system metrics measure the machine, which no reproduction repeats."""
    from train.tracking.names import is_training_metric

    rows = []
    for key in sorted(filter(is_training_metric, client.get_run(original).data.metrics)):
        a = {m.step: m.value for m in client.get_metric_history(original, key)}
        b = {m.step: m.value for m in client.get_metric_history(reproduction, key)}
        worst = max((abs(a[s] - b[s]) if s in b else float("inf") for s in a), default=0.0)
        rows.append((key, a[max(a)], b[max(b)] if b else float("nan"), worst))
    return rows
