"""train.fetch against real servers, without training: an MLflow run's artifacts (runs:/ and mlflow-artifacts:),
an HTTP server, the S3 server; and the cache's promises (fetched once, never half-written)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import pytest

from tests.conftest import DATA_BUCKET, yolo_dataset, zipped
from train.data.yolo import layout
from train.errors import SourceError
from train.fetch import FetchSettings, cache, fetch


def _settings(tmp_path: Path, tracking_uri: str = "") -> FetchSettings:
    return FetchSettings(tmp_path / "cache", timeout_s=10, max_concurrency=8, tracking_uri=lambda: tracking_uri)


def test_a_dataset_logged_by_one_run_feeds_the_next(tracking_server, tmp_path):
    """runs:/<id>/<path> and the same artifacts as an mlflow-artifacts: URI: the dataset, whole, laid out for YOLOv5."""
    root = yolo_dataset(tmp_path / "made")
    client = tracking_server.client()
    experiment = client.get_experiment_by_name("e2e-fetch") or client.get_experiment(
        client.create_experiment("e2e-fetch"))
    run = client.create_run(experiment.experiment_id)
    client.log_artifacts(run.info.run_id, str(root), "dataset")
    client.set_terminated(run.info.run_id)

    for uri in (f"runs:/{run.info.run_id}/dataset",
                f"mlflow-artifacts:/{experiment.experiment_id}/{run.info.run_id}/artifacts/dataset"):
        found = layout(uri, _settings(tmp_path, tracking_server.uri))
        local = Path(str(found["path"]))
        assert sorted(p.relative_to(local) for p in local.rglob("*.jpg")) == sorted(
            p.relative_to(root) for p in root.rglob("*.jpg"))
        assert found["names"] == {0: "circle", 1: "square", 2: "triangle"} and found["nc"] == 3


class _Counting(http.server.SimpleHTTPRequestHandler):
    seen: List[str] = []

    def log_message(self, *args) -> None:
        _Counting.seen.append(f"{self.command} {self.path}")


@pytest.fixture
def web(tmp_path):
    """A plain HTTP server over tmp_path/www (Last-Modified, no ETag): (base URL, folder)."""
    folder = tmp_path / "www"
    folder.mkdir()
    _Counting.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_Counting, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()


def test_an_http_zip_is_downloaded_once_and_again_when_it_changes(web, tmp_path):
    url, folder = web
    root = yolo_dataset(tmp_path / "made")
    zipped(root, folder / "widgets.zip")
    settings = _settings(tmp_path)

    first = fetch(f"{url}/widgets.zip", settings, "data.source").path
    second = fetch(f"{url}/widgets.zip", settings, "data.source").path
    assert first == second and [s for s in _Counting.seen if s.startswith("GET")] == ["GET /widgets.zip"]

    os.utime(folder / "widgets.zip", (1, 1))  # a new Last-Modified: another content, as far as anyone can tell
    third = fetch(f"{url}/widgets.zip", settings, "data.source").path
    assert third != first and [s for s in _Counting.seen if s.startswith("GET")] == ["GET /widgets.zip"] * 2


def test_parallel_fetches_of_one_source_download_it_once(team_s3, tmp_path, monkeypatch):
    root = yolo_dataset(tmp_path / "made", seed=21, train_images=8, val_images=4)
    files = team_s3.upload_folder(root, "parallel-fetch")
    for key, value in team_s3.env().items():
        monkeypatch.setenv(key, value)
    settings = _settings(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: fetch(f"s3://{DATA_BUCKET}/parallel-fetch/", settings, "data.source").path,
                              range(4)))
    assert len(set(paths)) == 1 and team_s3.object_downloads("parallel-fetch/") == files
    assert len([p for p in paths[0].rglob("*") if p.is_file()]) == files


def test_an_interrupted_download_leaves_nothing_that_looks_complete(tmp_path):
    def dies_halfway(into: Path) -> None:
        (into / "data.yaml").write_text("names: [a]\n")
        raise KeyboardInterrupt  # Ctrl-C, a SIGTERM'd pod, a dropped connection

    with pytest.raises(KeyboardInterrupt):
        cache.once(tmp_path, "some source", dies_halfway)
    assert not (tmp_path / cache.key("some source")).exists()
    assert not list(tmp_path.glob(".staging-*"))
    # The next attempt builds it whole.
    done = cache.once(tmp_path, "some source", lambda into: (into / "data.yaml").write_text("names: [a]\n"))
    assert (done / "data.yaml").is_file()


def test_an_s3_prefix_with_nothing_under_it_is_refused_by_name(team_s3, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", team_s3.endpoint)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "x" * 8)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(SourceError) as refused:
        fetch(f"s3://{DATA_BUCKET}/nothing-here/", _settings(tmp_path), "data.source")
    assert str(refused.value).startswith(f"data.source: s3://{DATA_BUCKET}/nothing-here/: no such object, and no "
                                         f"objects under nothing-here/")


class _Redirecting(http.server.BaseHTTPRequestHandler):
    """/w.zip answers 302 to another host (the other server), which records the headers it was sent."""

    target = ""
    received: List[dict] = []

    def log_message(self, *args) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        _Redirecting.received.append(dict(self.headers))
        if self.path == "/w.zip" and _Redirecting.target:
            self.send_response(302)
            self.send_header("Location", _Redirecting.target)
            self.end_headers()
            return
        body = b"PK\x05\x06" + b"\0" * 18  # an empty zip
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", '"empty"')
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(body)


def test_a_url_login_is_never_sent_to_the_host_a_redirect_names(tmp_path):
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    home, elsewhere = (f"127.0.0.1:{s.server_address[1]}" for s in servers)
    _Redirecting.target, _Redirecting.received = f"http://localhost:{elsewhere.split(':')[1]}/data.zip", []
    try:
        fetch(f"http://user:s3cret@{home}/w.zip", _settings(tmp_path), "data.source")
    finally:
        for server in servers:
            server.shutdown()
    sent_home = [h for h in _Redirecting.received if "Authorization" in h]
    assert sent_home and all(h.get("Host") == home for h in sent_home)
    assert any(h.get("Host", "").startswith("localhost:") for h in _Redirecting.received)  # it did follow
