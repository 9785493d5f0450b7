"""Credentials in URLs never reach params, tags, logged configs or the console."""

from __future__ import annotations

from train.tracking.names import redact
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
