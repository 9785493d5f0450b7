"""Datasets and weights from where users keep them, into the cache once: a local path, s3://, http(s)://,
runs:/, mlflow-artifacts: or models:/.

Each copy is cached under what identifies its content at the source (train.fetch.cache), so a second
run starts without downloading, and a changed source is fetched again. Every failure is one line
naming the config key and the URI (never its login): SourceError, exit 2, before any run exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict
from urllib.parse import urlparse

from train.errors import SourceError
from train.fetch import cache, http, mlflow_sources, s3
from train.redact import redact, without_credentials

REMOTE_SCHEMES = ("s3", "http", "https", "runs", "mlflow-artifacts", "models")
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class FetchSettings:
    cache_dir: Path
    timeout_s: float
    max_concurrency: int
    # Called only for runs:/, mlflow-artifacts: and models:/ (the tracking server they live on).
    tracking_uri: Callable[[], str] = lambda: ""


@dataclass
class Fetched:
    path: Path  # the local file or folder, absolute: the cached copy, or the user's own path
    link: Dict[str, str] = field(default_factory=dict)  # the run or model version it came from


def scheme(uri: str) -> str:
    """The URI's scheme; '' for a local path (a Windows drive letter is no scheme either)."""
    parsed = urlparse(uri)
    return parsed.scheme if len(parsed.scheme) > 1 else ""


def _content(folder: Path) -> Path:
    """What a cache folder holds: its one file or folder, or itself when it holds several (a model's files)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return entries[0] if len(entries) == 1 else folder


def _cached(settings: FetchSettings, kind: str, identity: str, build: Callable[[Path], None]) -> Path:
    return _content(cache.once(settings.cache_dir / "fetched" / kind, identity, build))


def _fetch_s3(uri: str, settings: FetchSettings) -> Path:
    location = s3.S3Location.parse(uri)
    client = s3.client(settings.max_concurrency, settings.timeout_s, location)
    objects, identity = s3.listing(client, location)
    return _cached(settings, "s3", identity,
                   lambda into: s3.download(client, location, objects, into, settings.max_concurrency))


def _fetch_http(uri: str, settings: FetchSettings, immutable: bool) -> Path:
    identity = without_credentials(uri) if immutable else http.identity(uri, settings.timeout_s)

    def build(into: Path) -> None:
        http.download(uri, into, settings.timeout_s)

    return _cached(settings, "http", identity, build)


def _fetch_artifacts(uri: str, settings: FetchSettings) -> Path:
    tracking_uri = settings.tracking_uri()
    mlflow_sources.check_run_exists(uri, tracking_uri)

    def build(into: Path) -> None:
        mlflow_sources.download_artifacts(uri, tracking_uri, into)

    return _cached(settings, "mlflow", mlflow_sources.run_identity(uri, tracking_uri), build)


def _fetch_model(uri: str, settings: FetchSettings) -> Fetched:
    tracking_uri = settings.tracking_uri()
    version = mlflow_sources.resolve_model(uri, tracking_uri)
    pinned = f"models:/{version.name}/{version.version}"

    def build(into: Path) -> None:
        mlflow_sources.download_artifacts(pinned, tracking_uri, into)

    # The model id too: a deleted and re-created registered model numbers its versions from 1 again.
    identity = f"{mlflow_sources.run_identity(pinned, tracking_uri)} {version.run_id} {version.model_id}"
    return Fetched(_cached(settings, "mlflow", identity, build), version.link_tags())


def fetch(uri: str, settings: FetchSettings, key: str, immutable: bool = False) -> Fetched:
    """`uri` as a local file or folder. key: the config key that named it, for the error line.
    immutable: an http(s) URL whose content never changes (a release asset): no request once cached."""
    try:
        return _fetch(uri, settings, immutable)
    except SourceError as error:
        raise SourceError(f"{key}: {redact(str(error))}") from None
    except OSError as error:  # the cache folder unwritable or full, a local source this user may not read
        where = f" ({error.filename})" if error.filename else ""
        raise SourceError(f"{key}: {redact(uri)}: {error.strerror or error}{where}") from None


def _run_of(kind: str, uri: str) -> Dict[str, str]:
    """runs:/<run id>/... and mlflow-artifacts:/<experiment>/<run id>/artifacts/...: the run, to link to."""
    parts = urlparse(uri).path.lstrip("/").split("/")
    run_id = parts[0] if kind == "runs" else (parts[1] if len(parts) > 2 and parts[2] == "artifacts" else "")
    return {"run_id": run_id} if RUN_ID.match(run_id) else {}


def _fetch(uri: str, settings: FetchSettings, immutable: bool) -> Fetched:
    kind = scheme(uri)
    if kind in ("", "file"):
        path = Path(urlparse(uri).path if kind == "file" else uri).expanduser()
        if not path.exists():  # an OSError here (a folder this user may not enter) becomes one line in fetch()
            raise SourceError(f"{uri}: no such file or folder")
        return Fetched(path.resolve())  # YOLOv5 looks relative weight names up on the Hugging Face hub
    if kind == "s3":
        return Fetched(_fetch_s3(uri, settings))
    if kind in ("http", "https"):
        return Fetched(_fetch_http(uri, settings, immutable))
    if kind in ("runs", "mlflow-artifacts"):
        return Fetched(_fetch_artifacts(uri, settings), _run_of(kind, uri))
    if kind == "models":
        return _fetch_model(uri, settings)
    raise SourceError(f"{uri}: unsupported scheme {kind!r} (a local path, or one of: "
                      f"{', '.join(f'{s}:' for s in REMOTE_SCHEMES)})")

