"""Credentials in URLs never reach params, tags, logged configs or the console."""

from __future__ import annotations

from train.redact import redact
from train.tracking.run import one_line


def test_url_credentials_are_redacted_wherever_they_appear():
    text = "mlflow.tracking_uri=http://bob:p@ss@h:5000/x and postgresql+psycopg2://u:pw@db/mlflow, s3://key@bucket"
    assert redact(text) == ("mlflow.tracking_uri=http://***@h:5000/x and postgresql+psycopg2://***@db/mlflow, "
                            "s3://***@bucket")


def test_urls_without_credentials_are_left_alone():
    assert redact("http://mlflow-service.kubeflow.svc:5000/#/experiments/1") == \
        "http://mlflow-service.kubeflow.svc:5000/#/experiments/1"


def test_network_errors_shrink_to_their_cause():
    urllib3_error = ("API request to http://h:1/api/2.0/mlflow/experiments/search failed with exception "
                     "HTTPConnectionPool(host='h', port=1): Max retries exceeded with url: /x (Caused by "
                     "NewConnectionError(\"HTTPConnection(host='h', port=1): Failed to establish a new connection: "
                     "[Errno 111] Connection refused\"))")
    assert one_line(Exception(urllib3_error)) == "[Errno 111] Connection refused"
    assert one_line(Exception("first line\nsecond")) == "first line"
    assert one_line(ValueError()) == "ValueError"


def test_secret_environment_values_are_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-s3-secret-123")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2hunter2")
    monkeypatch.setenv("EPOCHS", "a-plain-value")  # not secret by name: stays
    text = "key=canary-s3-secret-123 pw hunter2hunter2, a-plain-value"
    assert redact(text) == "key=*** pw ***, a-plain-value"


def test_short_secret_values_are_not_masked_everywhere(monkeypatch):
    monkeypatch.setenv("SOME_TOKEN", "true")  # a flag, not a credential: masking 'true' would garble every log
    assert redact("verbose=true") == "verbose=true"


def test_urls_as_hydras_sweepers_escape_them_are_redacted_too():
    escaped = r"mlflow.tracking_uri=http\://trainer\:s3cret-pw@127.0.0.1\:5000"
    assert redact(escaped) == r"mlflow.tracking_uri=http\://***@127.0.0.1\:5000"
    from train.redact import without_credentials

    assert without_credentials(escaped) == r"mlflow.tracking_uri=http\://127.0.0.1\:5000"


def test_a_dataset_input_reaches_the_record_without_the_login_in_its_source(tmp_path):
    from mlflow import MlflowClient
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    from train.tracking.record import RunRecord

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("inputs", str(tmp_path / "artifacts"))).info.run_id
    source = HTTPDatasetSource("https://alice:canary-s3cr3t@data.example.com/shapes.zip")
    dataset = MetaDataset(source, name="shapes", digest="abc123")._to_mlflow_entity()
    RunRecord(client, run_id).log_inputs([DatasetInput(dataset, [InputTag("mlflow.data.context", "train")])])
    [recorded] = client.get_run(run_id).inputs.dataset_inputs
    assert "canary-s3cr3t" not in recorded.dataset.source and "data.example.com/shapes.zip" in recorded.dataset.source
