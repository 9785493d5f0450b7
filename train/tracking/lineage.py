"""Where a run came from, recorded so it can be rerun: code, data and environment.

Code: commit, branch and whether the tree was dirty (the diff as an artifact when it was); MLflow's
own `mlflow.source.git.commit` stays as it sets it. Data: each split an MLflow dataset input whose
digest covers every image's and label's bytes, so runs on different data are told apart even under
one name. Environment: the versions actually imported, the GPU, the Kubernetes node, and the full
installed package list.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

import yaml

from train.fetch.cache import write_whole

if TYPE_CHECKING:
    from train.tracking.record import RunRecord

REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> Optional[str]:
    try:
        proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git (the Docker image): `mlflow run` tagged the commit from the submitting side
    return proc.stdout if proc.returncode == 0 else None


@dataclass
class CodeVersion:
    commit: str
    branch: str
    dirty: bool
    diff: str  # `git diff HEAD` plus the untracked files' names, when dirty

    def tags(self) -> Dict[str, str]:
        return {"git.commit": self.commit, "git.branch": self.branch, "git.dirty": str(self.dirty).lower()}


def code_version() -> Optional[CodeVersion]:
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = _git("status", "--porcelain") or ""
    diff = ""
    if status.strip():
        untracked = _git("ls-files", "--others", "--exclude-standard") or ""
        diff = (_git("diff", "HEAD") or "") + "".join(f"# untracked: {name}\n" for name in untracked.splitlines())
    return CodeVersion(commit.strip(), (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip(),
                       bool(status.strip()), diff)


class ArtifactUriSource:
    """A dataset source that is only its URI (runs:/..., mlflow-artifacts:/..., models:/...), for MetaDataset."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "mlflow_artifact"

    def to_dict(self) -> Dict[str, str]:
        return {"uri": self.uri}

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict())


# The server adds a dataset to an experiment by looking for it, then inserting it, in one transaction that
# does not lock the table: two runs of one experiment that log the same new dataset at the same moment (the
# trials of a parallel sweep) can both miss it, and the later insert fails on the datasets' unique key. The
# failed request changed nothing, and asked again it finds the dataset the other run inserted.
DATASET_RACE_ATTEMPTS = 3


def _lost_dataset_race(error: Exception) -> bool:
    text = str(error).lower()  # SQLite: "UNIQUE constraint failed: datasets..."; PostgreSQL: "... unique constraint"
    return "unique constraint" in text and "dataset" in text


def _dataset_source(uri: str):
    """MLflow's source for a local path, s3:// or http(s)://; for runs:/, mlflow-artifacts: and models:/, which
    MLflow has no dataset source for, the URI as recorded."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    try:
        return resolve_dataset_source(uri)
    except MlflowException:
        return ArtifactUriSource(uri)


def log_datasets(run: "RunRecord", name: str, source: str, digests: Dict[str, str]) -> None:
    """Each split (context -> digest) a dataset input of `run`, in one request (from any thread: no active run)."""
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = [DatasetInput(MetaDataset(_dataset_source(source), name=name, digest=digest)._to_mlflow_entity(),
                           [InputTag(MLFLOW_DATASET_CONTEXT, context)]) for context, digest in digests.items()]
    for attempt in range(1, DATASET_RACE_ATTEMPTS + 1):
        try:
            run.log_inputs(inputs)
            return
        except MlflowException as error:
            if attempt == DATASET_RACE_ATTEMPTS or not _lost_dataset_race(error):
                raise


def environment_tags() -> Dict[str, str]:
    import torch

    versions = {dist: importlib.metadata.version(dist) for dist in ("torch", "torchvision", "yolov5", "mlflow")}
    tags = {f"env.{dist}": version for dist, version in versions.items()}
    tags.update({
        "env.python": platform.python_version(),
        "env.cuda": torch.version.cuda or "none",
        "env.cudnn": str(torch.backends.cudnn.version()) if torch.cuda.is_available() else "none",
        "env.gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "env.gpu_count": str(torch.cuda.device_count()),
        "env.host": platform.node(),
    })
    if os.environ.get("NODE_NAME"):  # set by the Job template from the pod's spec.nodeName
        tags["env.k8s_node"] = os.environ["NODE_NAME"]
    return tags


def packages_state() -> str:
    """A name for the installed packages as they are now: the package folders on sys.path (site-packages,
    dist-packages) and their modification times (an install or removal changes them). The working directory and
    the project's folder are left out: a run writing its outputs there changes theirs."""
    return hashlib.sha256(repr([(entry, os.stat(entry).st_mtime_ns) for entry in sys.path
                                if Path(entry).name.endswith("-packages") and os.path.isdir(entry)]).encode()
                          ).hexdigest()[:32]


def kept_per_environment(cache_dir: Path, suffix: str, make: Callable[[], str],
                         usable: Callable[[str], bool] = bool) -> str:
    """`make()`, kept under `cache_dir` for the installed packages as they are (`packages_state`) and read from
    there while they stay so (written by train.fetch.cache.write_whole); a kept text that is unreadable or not
    `usable` (by default: empty) is made again. A cache that cannot be written only costs the time to make it."""
    kept = cache_dir / "environments" / f"{packages_state()}{suffix}"
    try:
        text = kept.read_text()
        if usable(text):
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = make()
    try:
        write_whole(kept, text)
    except OSError:
        pass
    return text


def installed_packages(cache_dir: Optional[Path] = None) -> str:
    """name==version of every installed distribution, sorted: what actually ran, beside what was pinned.

    Reading every distribution's metadata takes about half a second; with `cache_dir`, the list is made once
    per environment (`kept_per_environment`)."""
    def scan() -> str:
        pins = {f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()
                if d.metadata["Name"]}
        return "".join(f"{pin}\n" for pin in sorted(pins, key=str.lower))

    return kept_per_environment(cache_dir, ".txt", scan) if cache_dir else scan()


def dataset_source(config: Mapping[str, Any], data_yaml: Path) -> str:
    """Where the data came from, as the user gave it: never a cache path."""
    data = config["data"]
    if data["name"] == "yolo":
        return data["source"]
    if data["name"] == "coco128" and data["root"] is None:
        return data["download_url"]
    return str(yaml.safe_load(data_yaml.read_text())["path"])


def record(run: "RunRecord", config: Mapping[str, Any], data_yaml: Path) -> None:
    """Tags, dataset inputs and artifacts of the active run (`run`). The starting weights' link (train.model.weights)
    is among the tags the run was created with: open-source MLflow takes a model among a run's inputs only from
    Databricks (`log_inputs(models=...)` is refused)."""
    from omegaconf import OmegaConf

    from train.data import dataset_name, digests
    from train.redact import redact

    code = code_version()
    run.set_tags({**(code.tags() if code else {}), **environment_tags()})
    if code and code.dirty:
        run.log_text(code.diff, "code/git-diff.patch")
    log_datasets(run, dataset_name(OmegaConf.create(config["data"])), redact(dataset_source(config, data_yaml)),
                 digests(data_yaml, Path(config["paths"]["cache_dir"])))
    run.log_text(installed_packages(Path(config["paths"]["cache_dir"])), "environment/installed.txt")
    lock = REPO / "requirements.lock"
    if lock.is_file():
        run.log_file(lock, "environment")
