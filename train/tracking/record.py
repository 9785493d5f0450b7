"""The one writer of a run's record: every name, value and artifact byte passes `redact` on its way.

Params, tags, metric keys, run names and text artifacts are redacted here, so no code path can log a
credential by forgetting to: the code elsewhere calls these functions, never MlflowClient's writers.
Binary artifacts (checkpoints, images) are uploaded as they are: masking bytes inside a zip or a
pickle would corrupt it, and none of them holds a URL or an environment value.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, Sequence

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from train.redact import redact, redact_bytes

_BATCH_LIMIT = 100  # MLflow's log_batch takes at most 100 params or tags per request
_IMAGE_KEY_INVALID = re.compile(r"[^a-zA-Z0-9_\-./ ]")  # what MlflowClient.log_image takes in a key


def clean_tags(tags: Mapping[str, Any]) -> Dict[str, str]:
    return {redact(str(key)): redact(str(value)) for key, value in tags.items()}


class RunRecord:
    """Writes to one run through `client`; what it writes is redacted first."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, v) for k, v in clean_tags(tags).items()]
        for i in range(0, len(items), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, tags=items[i:i + _BATCH_LIMIT])

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(k, v) for k, v in clean_tags(params).items()]
        for i in range(0, len(items), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=items[i:i + _BATCH_LIMIT])

    def log_metrics(self, metrics: Iterable[Metric]) -> None:
        self.client.log_batch(self.run_id, metrics=[
            Metric(redact(m.key), m.value, m.timestamp, m.step, model_id=m.model_id,
                   dataset_name=redact(m.dataset_name) if m.dataset_name else None, dataset_digest=m.dataset_digest)
            for m in metrics])

    def log_inputs(self, datasets: Sequence[Any]) -> None:
        """MLflow DatasetInputs of this run, their names and sources redacted (a source is a URL, and may carry a
        login)."""
        from mlflow.entities import Dataset, DatasetInput

        clean = [DatasetInput(Dataset(name=redact(given.dataset.name), digest=given.dataset.digest,
                                      source_type=given.dataset.source_type, source=redact(given.dataset.source),
                                      schema=given.dataset.schema, profile=given.dataset.profile), given.tags)
                 for given in datasets]
        self.client.log_inputs(self.run_id, datasets=clean)

    def start_logged_model(self, experiment_id: str, name: str, tags: Mapping[str, Any],
                           params: Optional[Mapping[str, Any]] = None):
        """A LoggedModel of this run, PENDING (so never taken for complete) until `finish_logged_model`."""
        return self.client.create_logged_model(experiment_id, name=redact(name), source_run_id=self.run_id,
                                               tags=clean_tags(tags), params=clean_tags(params or {}),
                                               model_type="yolov5")

    def log_model_output(self, model_id: str, step: int) -> None:
        """The model among the run's outputs at `step` (the UI's model list of the run)."""
        from mlflow.entities import LoggedModelOutput

        self.client.log_outputs(self.run_id, [LoggedModelOutput(model_id, step=step)])

    def log_model_files(self, model_id: str, folder: Path) -> None:
        with _staged(folder) as staged:
            self.client.log_model_artifacts(model_id, str(staged))

    def finish_logged_model(self, model_id: str, complete: bool) -> None:
        from mlflow.entities import LoggedModelStatus

        self.client.finalize_logged_model(model_id, LoggedModelStatus.READY if complete else LoggedModelStatus.FAILED)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, redact(text), artifact_file)

    def log_yaml(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.log_text(yaml.safe_dump(dict(data), sort_keys=False), artifact_file)

    def log_file(self, path: Path, artifact_path: Optional[str] = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            self.client.log_artifact(self.run_id, str(_redacted_copy(path, Path(tmp))), artifact_path)

    def log_folder(self, folder: Path, artifact_path: Optional[str] = None) -> None:
        """Every file under `folder`: unchanged files hard-linked (no copy), text with a secret in it masked."""
        with _staged(folder) as staged:
            if staged.is_dir():
                self.client.log_artifacts(self.run_id, str(staged), artifact_path)

    def log_image(self, path: Path, key: str, step: int) -> None:
        """An image file as MLflow's image `key` at `step` (images/<key>+step+<step>+..., a .png and a .webp
        preview; the run's tag mlflow.loggedImages): its pixels as they are, the key redacted."""
        from PIL import Image

        clean_key = _IMAGE_KEY_INVALID.sub("_", redact(key)) or "_"
        with Image.open(path) as image:
            image.load()  # the whole file now: a truncated one raises here, before anything is sent
            self.client.log_image(self.run_id, image, key=clean_key, step=step, synchronous=True)

    def log_table(self, data: Mapping[str, Sequence[Any]], artifact_file: str) -> None:
        """A table of columns (name -> values) as MLflow's JSON table artifact ({"columns": ..., "data": ...});
        the column names and every string cell redacted. MLflow appends to an artifact_file the run already has."""
        clean = {redact(str(column)): [redact(v) if isinstance(v, str) else v for v in values]
                 for column, values in data.items()}
        self.client.log_table(self.run_id, clean, redact(artifact_file))

    def set_terminated(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


@contextmanager
def _staged(folder: Path) -> Iterator[Path]:
    """A copy of `folder` to upload: unchanged files hard-linked (no copy), text with a secret in it masked."""
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-upload-") as tmp:
        staged = Path(tmp) / folder.name
        for source in sorted(p for p in folder.rglob("*") if p.is_file()):
            _redacted_copy(source, staged / source.relative_to(folder).parent)
        yield staged


def _redacted_copy(source: Path, into: Path) -> Path:
    """`source` placed in `into` under its own name: masked if it is text holding a secret, else linked."""
    into.mkdir(parents=True, exist_ok=True)
    target = into / source.name
    if _is_text(source):
        data = source.read_bytes()
        masked = redact_bytes(data)
        if masked != data:
            target.write_bytes(masked)
            return target
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)
    return target


_SNIFF_BYTES = 8192


def _is_text(path: Path) -> bool:
    """UTF-8 without NULs in its first 8 KiB: checkpoints and images are told apart without reading them whole."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return len(head) == _SNIFF_BYTES and error.start >= len(head) - 3  # a character cut at the 8 KiB edge
    return True


def create_run(client: MlflowClient, experiment_id: str, run_name: str, tags: Mapping[str, Any]):
    """A new run whose name and tags are redacted."""
    return client.create_run(experiment_id, run_name=redact(run_name), tags=clean_tags(tags))
