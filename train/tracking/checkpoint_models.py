"""The run's models as MLflow 3 logged models: each uploaded snapshot's weights, and at the end best.pt as `model`,
LoggedModels of the run at their epoch, with that epoch's metrics linked to them, so the UI's model list shows every
checkpoint with its mAP and
`mlflow.search_logged_models(order_by=[{"field_name": "metrics.metrics/mAP_0.5_0.95", "ascending": False}])`
finds the best.

The metric points linked are the ones the spool sent (train/tracking/spool.py), not read back from the server:
MLflow's own Model.log reads every metric's whole history to find one epoch's points (27 histories of 100 points
took 1 s at the end of a 100-epoch run), which grows with epochs and classes.

Checkpoints are logged on the uploader's thread (train/tracking/checkpoints.py), the final model on a thread of
its own beside the end-of-run uploads (train/tracking/session.py); never on the training's. A model is created
PENDING and set READY only once its files and metric links are stored (the final model: once its run's record is
too); one abandoned half way (the run ended, an outage outlasted by a newer snapshot) is set FAILED where the
server still answers, and otherwise stays PENDING: neither claims to be complete. On a file store the metrics are
not linked (`stores_identical_points_once`).
"""

from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from mlflow.entities import Metric

from train.errors import ModelAbandoned
from train.tracking.names import is_training_metric
from train.tracking.record import RunRecord
from train.tracking.spool import EpochPoints

BEST, LAST = "best-checkpoint", "last-checkpoint"  # the checkpoints' LoggedModels
FINAL = "model"  # best.pt at the end, the model a run is registered and served by
VALIDATION = "validation"  # the MLflow input context whose dataset the epoch's metrics are measured on


@dataclass
class CheckpointModel:
    """One weights file of a snapshot and the epoch it holds."""
    name: str
    weights: Path
    epoch: int
    example: Optional[Path] = None  # an input example (the final model): its model is also checked once for serving


class CheckpointModels:
    """Logs `CheckpointModel`s through `record`, linking the points `points(epoch)` returns (as the metric spool
    sent them: the same key, step, timestamp and value, so the run's history gains no point)."""

    def __init__(self, record: RunRecord, experiment_id: str, imgsz: int,
                 points: Callable[[int], Optional[EpochPoints]], cache_dir: Optional[Path] = None) -> None:
        self.record, self.experiment_id, self.imgsz, self._points = record, experiment_id, imgsz, points
        # Where MLflow's map of installed packages and the serving checks that passed are remembered.
        self.cache_dir = cache_dir
        self._dataset: Optional[Tuple[str, str]] = None
        self.logged: List[str] = []  # model ids set READY, in order

    def steps(self, model: CheckpointModel, abandoned: List[str]) -> List[Callable[[], None]]:
        """The requests that log `model`, in order, each safe to retry; the model's id is in `abandoned` while it
        is PENDING, so whoever gives up on the steps can mark it FAILED (`give_up`)."""
        state: dict = {}
        folder = tempfile.TemporaryDirectory(prefix="checkpoint-model-")

        def create() -> None:
            if "model" not in state:
                # The run's params, as MLflow's Model.log copies them: the model's page shows what trained it.
                params = self.record.client.get_run(self.record.run_id).data.params
                state["model"] = self.record.start_logged_model(
                    self.experiment_id, model.name, {"epoch": model.epoch, "weights": model.weights.name}, params)
                abandoned.append(state["model"].model_id)

        def list_in_run() -> None:  # a step of its own: a retry must not create the model again
            model_id = state["model"].model_id
            # The server refuses a second listing of the same model: a retry (the answer lost) checks first.
            if state.get("listing_sent") and any(output.model_id == model_id for output in
                                                 self.record.client.get_run(self.record.run_id).outputs.model_outputs):
                return
            state["listing_sent"] = True
            self.record.log_model_output(model_id, model.epoch)

        def upload() -> None:
            from train.model.registry import save_detector_model
            from train.tracking.mlflow_internals import remember_package_map

            if "files" not in state:
                if self.cache_dir is not None:
                    remember_package_map(self.cache_dir)
                checks = self.cache_dir / "serving-checks" if self.cache_dir else None
                state["files"] = save_detector_model(model.weights, self.imgsz, Path(folder.name), state["model"],
                                                     model.example, checks)
            self.record.log_model_files(state["model"].model_id, state["files"])

        def link_metrics() -> None:
            if not stores_identical_points_once(self.record.client.tracking_uri):
                return
            points = self._points(model.epoch)
            metrics = points.as_metrics() if points is not None else self._from_server(model.epoch)
            if metrics:
                name, digest = self._validation_dataset()
                self.record.log_metrics([Metric(m.key, m.value, m.timestamp, m.step, model_id=state["model"].model_id,
                                                dataset_name=name, dataset_digest=digest) for m in metrics])

        def finish() -> None:
            self.record.finish_logged_model(state["model"].model_id, complete=True)
            abandoned.remove(state["model"].model_id)
            self.logged.append(state["model"].model_id)
            folder.cleanup()

        return [create, list_in_run, upload, link_metrics, finish]

    def log_pending(self, model: CheckpointModel, cancelled: Optional[threading.Event] = None) -> "PendingModel":
        """`model` logged now but left PENDING, each request tried once (the final model: the run waits for it);
        what sets it READY or FAILED. ModelAbandoned, with the model FAILED, when `cancelled` is set before one of
        its requests."""
        abandoned: List[str] = []
        *requests, finish = self.steps(model, abandoned)
        try:
            for step in requests:
                if cancelled is not None and cancelled.is_set():
                    raise ModelAbandoned(f"{model.name} abandoned: the run ended first")
                step()
        except BaseException:
            self.give_up(abandoned)
            raise
        return PendingModel(self, abandoned, finish)

    def give_up(self, abandoned: List[str], timeout_s: float = 5) -> None:
        """The models left PENDING by steps not all taken: FAILED, where the server takes it within `timeout_s`
        (and PENDING where it does not: neither claims to be complete).

        On a thread of its own, so the wait is bounded without changing MLflow's retries (read from the process's
        environment, which other threads' requests share); one that outlives the wait dies with the process."""
        def mark_failed() -> None:
            for model_id in list(abandoned):
                try:
                    self.record.finish_logged_model(model_id, complete=False)
                    abandoned.remove(model_id)
                except Exception:  # noqa: BLE001 - the server is gone: PENDING says as much
                    pass

        marking = threading.Thread(target=mark_failed, name="mlflow-model-give-up", daemon=True)
        marking.start()
        marking.join(timeout_s)

    def _from_server(self, epoch: int) -> List[Metric]:
        """`epoch`'s training metrics as the server holds them: for an epoch this process did not train (a resumed
        run's best.pt from an earlier attempt). One history per metric, as MLflow's Model.log reads them."""
        client, run_id = self.record.client, self.record.run_id
        keys = [key for key in client.get_run(run_id).data.metrics if is_training_metric(key)]
        return [m for key in keys for m in client.get_metric_history(run_id, key) if m.step == epoch]

    def _validation_dataset(self) -> Tuple[Optional[str], Optional[str]]:
        """The validation split's (name, digest) among the run's dataset inputs (lineage logged them)."""
        if self._dataset is None:  # asked again until found: lineage may still be on its way
            for dataset_input in self.record.client.get_run(self.record.run_id).inputs.dataset_inputs:
                if any(tag.key == "mlflow.data.context" and tag.value == VALIDATION for tag in dataset_input.tags):
                    self._dataset = (dataset_input.dataset.name, dataset_input.dataset.digest)
        return self._dataset or (None, None)


def stores_identical_points_once(tracking_uri: str) -> bool:
    """Whether sending a point the run already has adds nothing to its history: so for a SQL store, directly or
    behind a server. A file store (a local folder, or `file:`) appends every point sent: its models go unlinked
    rather than double each linked epoch. A server in front of a file store cannot be told apart (docs/tracking.md)."""
    from mlflow.utils.uri import is_file_uri, is_local_uri

    uri = str(tracking_uri)
    return not (is_file_uri(uri) or is_local_uri(uri, is_tracking_or_registry_uri=True))


class PendingModel:
    """A model whose files and metric links are stored, PENDING until its run's record is: then `ready`; or, when
    the run does not finish, `abandon` (FAILED). Either once, from any thread; PENDING while its id is in
    `abandoned` (the steps' own bookkeeping)."""

    def __init__(self, models: CheckpointModels, abandoned: List[str], finish: Callable[[], None]) -> None:
        self._models, self._abandoned, self._finish = models, abandoned, finish
        [self.model_id] = abandoned
        self._lock = threading.Lock()

    def ready(self) -> str:
        """READY; its model URI."""
        with self._lock:
            if self.model_id in self._abandoned:
                self._finish()
            return f"models:/{self.model_id}"

    def abandon(self) -> None:
        """FAILED, unless already READY (its files are complete: it stays so)."""
        with self._lock:
            if self.model_id in self._abandoned:
                self._models.give_up(self._abandoned)
