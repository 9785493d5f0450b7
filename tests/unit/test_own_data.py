"""A user's dataset yaml read as YOLOv5 reads it, its labels checked, its digests cached; MLproject's -P data and
-P weights; release names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import yolo_dataset, zipped
from train.data.scan import scan
from train.data.yolo import dataset_name, layout
from train.errors import DatasetError, SourceError
from train.fetch import FetchSettings
from train.mlproject import to_overrides
from train.model.weights import is_release_name


@pytest.fixture(scope="module")
def widgets(tmp_path_factory) -> Path:
    return yolo_dataset(tmp_path_factory.mktemp("own"), train_images=6, val_images=3)


def _settings(tmp_path: Path) -> FetchSettings:
    return FetchSettings(tmp_path / "cache", timeout_s=5, max_concurrency=2)


def _with_yaml(widgets: Path, tmp_path: Path, **spec) -> Path:
    copy = tmp_path / "copy"
    if not copy.exists():
        copy.symlink_to(widgets)
    data = tmp_path / "mine.yaml"
    data.write_text(yaml.safe_dump({"path": str(copy), "train": "images/train", "val": "images/val", **spec}))
    return data


@pytest.mark.parametrize("names, expected", [
    (["a", "b", "c"], {0: "a", 1: "b", 2: "c"}),
    ({0: "a", 1: "b", 2: "c"}, {0: "a", 1: "b", 2: "c"}),
    (None, {0: "class0", 1: "class1", 2: "class2"}),  # nc alone, as YOLOv5 names them
])
def test_names_as_a_list_a_map_or_only_nc(widgets, tmp_path, names, expected):
    spec = {"names": names} if names is not None else {"nc": 3}
    found = layout(str(_with_yaml(widgets, tmp_path, **spec)), _settings(tmp_path))
    assert found["names"] == expected and found["nc"] == 3


def test_a_folder_or_a_zip_is_searched_for_its_yaml_and_is_its_own_root(widgets, tmp_path):
    assert layout(str(widgets), _settings(tmp_path))["path"] == str(widgets.resolve())
    # A zip whose yaml says `path: ../datasets/widgets` (the uploader's machine): the unzipped copy is the root.
    spec = {**yaml.safe_load((widgets / "data.yaml").read_text()), "path": "../datasets/widgets"}
    staged = tmp_path / "staged"
    shutil.copytree(widgets, staged)
    (staged / "data.yaml").write_text(yaml.safe_dump(spec))
    found = layout(str(zipped(staged, tmp_path / "w.zip")), _settings(tmp_path))
    root = Path(str(found["path"]))
    assert root.is_relative_to(tmp_path / "cache") and (root / "images" / "train").is_dir()


def test_two_yamls_and_no_data_yaml_is_ambiguous(widgets, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.yaml", "b.yaml"):
        (folder / name).write_text("train: x\n")
    with pytest.raises(DatasetError, match="2 yaml files at the top of the dataset and none named data.yaml"):
        layout(str(folder), _settings(tmp_path))


@pytest.mark.parametrize("line, problem", [
    ("0 0.5 0.5 0.2", "expected 'class x_center y_center width height'"),
    ("a 0.5 0.5 0.2 0.2", "not all numbers"),
    ("1.5 0.5 0.5 0.2 0.2", "the class is not a whole number"),
    ("3 0.5 0.5 0.2 0.2", "class 3, but the dataset has 3 classes (0-2)"),
    ("0 50 50 20 20", "coordinates must be normalized to 0-1"),
])
def test_each_bad_label_line_is_named_with_its_file_and_number(widgets, tmp_path, line, problem):
    copy = tmp_path / "copy"
    shutil.copytree(widgets, copy)
    label = copy / "labels" / "val" / "val_00001.txt"
    label.write_text(label.read_text() + line + "\n")
    found = layout(str(copy), _settings(tmp_path))
    with pytest.raises(DatasetError) as refused:
        scan(found, tmp_path / "cache", "data.source")
    number = len(label.read_text().splitlines())
    assert str(refused.value).startswith(f"data.source: labels/val/val_00001.txt line {number}: {problem}")


def test_polygon_labels_and_background_images_are_fine(widgets, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(widgets, copy)
    (copy / "labels" / "train" / "train_00000.txt").write_text("1 0.1 0.1 0.9 0.1 0.5 0.9\n")
    (copy / "labels" / "train" / "train_00001.txt").unlink()  # an image without objects
    assert set(scan(layout(str(copy), _settings(tmp_path)), tmp_path / "cache", "data.source")) == {
        "training", "validation"}


def test_a_scan_is_cached_by_the_files_identity_and_redone_when_one_changes(widgets, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(widgets, copy)
    found = layout(str(copy), _settings(tmp_path))
    first = scan(found, tmp_path / "cache", "data.source")
    records = set((tmp_path / "cache" / "digests").iterdir())
    assert scan(found, tmp_path / "cache", "data.source") == first
    assert set((tmp_path / "cache" / "digests").iterdir()) == records  # nothing new: read from the records

    label = copy / "labels" / "train" / "train_00002.txt"
    label.write_text("0 0.5 0.5 0.1 0.1\n")
    os.utime(label, ns=(1, 1))
    again = scan(found, tmp_path / "cache", "data.source")
    assert again["training"] != first["training"] and again["validation"] == first["validation"]


def test_yolo_data_must_say_where_and_only_yolo_data_may():
    from train.compose import compose_config
    from train.errors import ConfigError

    with pytest.raises(ConfigError, match="^data.source: data=yolo needs it"):
        compose_config(["data=yolo"])
    with pytest.raises(ConfigError, match="^data.source: is for data=yolo, not data=synthetic"):
        compose_config(["data.source=/tmp"])


def test_a_missing_local_source_is_refused_before_anything_is_fetched(tmp_path):
    from train.fetch import fetch

    with pytest.raises(SourceError, match="^data.source: /nope/data.yaml: no such file or folder$"):
        fetch("/nope/data.yaml", _settings(tmp_path), "data.source")


@pytest.mark.parametrize("argv, overrides", [
    (["--data", "coco128"], ["data=coco128"]),
    (["--data", "s3://datasets/widgets/"], ["data=yolo", "data.source=s3://datasets/widgets/"]),
    (["--data", "https://h/w.zip?sig=a&x=b"], ["data=yolo", "data.source='https://h/w.zip?sig=a&x=b'"]),
    (["--weights", "models:/widgets@champion"], ["model.weights=models:/widgets@champion"]),
    (["--weights", "runs:/0123/training-output/weights/best.pt"],
     ["model.weights=runs:/0123/training-output/weights/best.pt"]),
])
def test_mlproject_data_and_weights_take_every_form(argv, overrides):
    assert to_overrides(argv) == overrides


def test_mlproject_overrides_compose(tmp_path):
    """What -P data=<a URL with a query> becomes is one value to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [_, source] = to_overrides(["--data", "https://h/w.zip?sig=a&x=b"])
    assert OverridesParser.create().parse_override(source).value() == "https://h/w.zip?sig=a&x=b"


@pytest.mark.parametrize("name, released", [("yolov5n.pt", True), ("yolov5x6.pt", True), ("yolov5s.pt", True),
                                            ("yolov8n.pt", False), ("best.pt", False), ("/w/yolov5s.pt", False)])
def test_release_names(name, released):
    assert is_release_name(name) is released


@pytest.mark.parametrize("source, name", [("s3://datasets/widgets/", "widgets"), ("/data/widgets/data.yaml", "widgets"),
                                          ("https://h/sets/gadgets.zip", "gadgets"), ("runs:/abc/dataset", "abc")])
def test_dataset_names_come_from_the_source(source, name):
    assert dataset_name(source) == name


def test_a_reproduction_refuses_other_starting_weights_in_one_line():
    from train.errors import ConfigError
    from train.model.weights import StartingWeights
    from train.tracking.reproduce import Reproduction, check_weights

    original = Reproduction("r1", {}, {}, "a" * 64, False, "reproduce-x")
    check_weights(original, StartingWeights("models:/x@champion", Path("/w.pt"), "a" * 64))  # the same file: fine
    with pytest.raises(ConfigError, match=r"^model.weights: models:/x@champion is sha256 bbbbbbbbbbbb, run r1 started "
                                          r"from aaaaaaaaaaaa \(python -m train.reproduce --allow-mismatch"):
        check_weights(original, StartingWeights("models:/x@champion", Path("/w.pt"), "b" * 64))


def test_credentials_in_a_url_query_are_masked_in_the_record_and_the_cache_identity():
    from train.redact import redact, without_credentials

    signed = "https://s3.example/b/w.zip?X-Amz-Credential=AKIA1&X-Amz-Signature=f00d&X-Amz-Date=20261202"
    assert redact(signed) == "https://s3.example/b/w.zip?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Date=20261202"
    assert without_credentials("https://u:pw@h/w.zip?token=t0k3n") == "https://h/w.zip?token=***"


def test_an_s3_key_that_would_land_outside_the_copy_is_refused(tmp_path):
    from train.fetch.s3 import S3Location, download

    location = S3Location.parse("s3://datasets/widgets/")
    with pytest.raises(SourceError, match=r"the object 'widgets/\.\./\.\./etc/x' has no path a copy can hold"):
        download(None, location, [("widgets/../../etc/x", 1)], tmp_path, 2)


def test_an_empty_download_is_not_cached(tmp_path):
    from train.fetch import cache

    with pytest.raises(SourceError, match="nothing was downloaded"):
        cache.once(tmp_path, "an empty folder", lambda into: None)
    assert not (tmp_path / cache.key("an empty folder")).exists()


def test_a_reproduction_starts_from_the_version_the_alias_named_then():
    from train.tracking.reproduce import _pin_model_version

    config = {"model": {"weights": "models:/widgets@champion"}}
    _pin_model_version(config, {"weights.model_name": "widgets", "weights.model_version": "3"})
    assert config["model"]["weights"] == "models:/widgets/3"
