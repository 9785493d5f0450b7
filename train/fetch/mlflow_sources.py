"""runs:/<run id>/<path>, mlflow-artifacts:/<path> and models:/<name>@<alias> or models:/<name>/<version>.

A run's artifacts are written once, so the URI (with the server it lives on) is their identity. A
registered model's alias moves: it is resolved to a version first, and the version is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict
from urllib.parse import urlparse

from train.errors import SourceError
from train.redact import redact, without_credentials


@dataclass
class ModelVersionRef:
    """The version a models:/ URI names now, and the run that logged it: the link a new run records."""

    name: str
    version: str
    run_id: str
    model_id: str = ""  # MLflow 3's logged model, when the version has one

    def link_tags(self) -> Dict[str, str]:
        tags = {"model_name": self.name, "model_version": self.version, "run_id": self.run_id}
        if self.model_id:
            tags["model_id"] = self.model_id
        return tags


def _explain(uri: str, tracking_uri: str, error: Exception) -> SourceError:
    from mlflow.exceptions import MlflowException

    message = error.message if isinstance(error, MlflowException) else str(error)
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return SourceError(f"{uri}: cannot read it from {redact(tracking_uri)}: {first}")


def run_identity(uri: str, tracking_uri: str) -> str:
    return f"{without_credentials(tracking_uri)} {uri}"


def check_run_exists(uri: str, tracking_uri: str) -> None:
    """runs:/<id>/...: the run exists (a clearer line than the artifact store's)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    run_id = urlparse(uri).path.lstrip("/").split("/", 1)[0] if uri.startswith("runs:") else ""
    if not run_id:
        return
    try:
        MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":  # denied, the server down, ...: say what it said
            raise _explain(uri, tracking_uri, error) from None
        raise SourceError(f"{uri}: no run {run_id} at {redact(tracking_uri)}") from None


def download_artifacts(uri: str, tracking_uri: str, into: Path) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into),
                                                        tracking_uri=tracking_uri))
    except Exception as error:  # noqa: BLE001 - any failure of the store becomes one line
        raise _explain(uri, tracking_uri, error) from None


def resolve_model(uri: str, tracking_uri: str) -> ModelVersionRef:
    """models:/<name>@<alias> or models:/<name>/<version> -> the version it names now."""
    from mlflow import MlflowClient

    body = uri[len("models:/"):] if uri.startswith("models:/") else ""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        elif body.count("/") == 1 and body.split("/")[1].isdigit():
            name, number = body.split("/")
            version = client.get_model_version(name, number)
        else:
            raise SourceError(f"{uri}: name a registered model version: models:/<name>@<alias> or "
                              f"models:/<name>/<version>")
    except SourceError:
        raise
    except Exception as error:  # noqa: BLE001
        raise _explain(uri, tracking_uri, error) from None
    return ModelVersionRef(version.name, str(version.version), version.run_id or "",
                           getattr(version, "model_id", None) or _logged_model_id(client, version))


def _logged_model_id(client, version) -> str:
    """The logged model a version was registered from, when the version does not name it (registered by run URI):
    MLflow 3 records its source as models:/<model id>, or (from a runs:/ source) the run's model of that name."""
    from mlflow.exceptions import MlflowException

    source = version.source or ""
    if source.startswith("models:/m-"):
        return source[len("models:/"):]
    if not (source.startswith("runs:/") and version.run_id):
        return ""
    name = source.split("/", 2)[2] if source.count("/") >= 2 else ""
    try:
        run = client.get_run(version.run_id)
        models = client.search_logged_models([run.info.experiment_id],
                                             filter_string=f"source_run_id = '{version.run_id}' AND name = '{name}'")
    except MlflowException:
        return ""  # an older server without logged models: the version and run tags still link back
    return models[0].model_id if len(models) == 1 else ""
