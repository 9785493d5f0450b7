"""Keys reach the server valid, whatever YOLOv5 or a class name puts in them."""

from __future__ import annotations

import pytest
from mlflow.utils.validation import _validate_metric_name, _validate_param_name

from train.tracking.names import MAX_KEY_LENGTH, flatten, sanitize_key


@pytest.mark.parametrize("raw,clean", [
    ("metrics/mAP_0.5:0.95", "metrics/mAP_0.5_0.95"),
    ("metrics/mAP_0.5", "metrics/mAP_0.5"),
    ("train/box_loss", "train/box_loss"),
    ("metrics/traffic light_mAP", "metrics/traffic light_mAP"),
    ("metrics/lr+wd", "metrics/lr_wd"),
    ("metrics/mAP@0.5", "metrics/mAP_0.5"),
    ("loss(box)", "loss_box_"),
    ("a//b", "a/b"),
    ("/lead/trail/", "lead/trail"),
    ("x/../y/./z", "x/y/z"),
    ("class\tname", "class_name"),
    ("metrics/🚗_mAP", "metrics/__mAP"),
    ("", "_"),
])
def test_sanitize_key(raw, clean):
    assert sanitize_key(raw) == clean


@pytest.mark.parametrize("raw", ["metrics/mAP_0.5:0.95", "a,b=c#[0]", "../x", "//", "é/ü:ß", "x" * 400, "🚀" * 3])
def test_sanitized_keys_pass_mlflows_own_validation(raw):
    key = sanitize_key(raw)
    _validate_metric_name(key)
    _validate_param_name(key)
    assert len(key) <= MAX_KEY_LENGTH


def test_flatten_nested_config_to_dotted_keys():
    flat = flatten({"train": {"epochs": 3, "cache": None}, "mlflow": {"tags": {}}, "names": ["a", "b"],
                    "hyp": {"lr0": 0.01}})
    assert flat == {"train.epochs": "3", "train.cache": "None", "mlflow.tags": "{}", "names": "['a', 'b']",
                    "hyp.lr0": "0.01"}


def test_flatten_truncates_values_to_mlflows_limit():
    assert len(flatten({"long": "x" * 10000})["long"]) == 6000
