"""The real conf/ composed with overrides, as `python -m train` composes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from train.compose import compose_config
from train.config import MODEL_NAMES, to_container
from train.errors import ConfigError
from train.yolo import model_yaml, yolov5_package_dir


def composed(*overrides: str) -> dict:
    return to_container(compose_config(list(overrides)))


@pytest.fixture(autouse=True)
def no_mlflow_env(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_the_offline_quickstart():
    c = composed()
    assert c["data"]["name"] == "synthetic" and c["model"]["name"] == "yolov5n"
    assert c["model"]["weights"] == ""
    assert c["train"]["imgsz"] == c["data"]["imgsz"] == 128
    assert c["mlflow"]["tracking_uri"] is None
    assert c["mlflow"]["experiment_name"] == "yolov5-synthetic-demo"
    assert c["mlflow"]["run_name"].startswith("yolov5n-synthetic-") and c["mlflow"]["run_name"].endswith("Z")


def test_names_say_what_the_run_is():
    c = composed("data=coco128", "model=yolov5s")
    assert c["mlflow"]["experiment_name"] == "yolov5-coco128-demo"  # the seed's name, kept for coco128
    assert c["mlflow"]["run_name"].startswith("yolov5s-coco128-")


def test_every_key_gets_its_value_from_conf_not_the_schema():
    """The schema only types: a key conf/ forgot fails composition (MISSING) instead of taking a hidden default."""
    from train.config import Config

    assert not OmegaConf.missing_keys(compose_config([]))
    bare = OmegaConf.missing_keys(OmegaConf.structured(Config))
    assert {"train.epochs", "train.imgsz", "mlflow.run_name", "sweep.objective", "reproduce.run_id"} <= bare


def test_debug_tiny_is_small_everywhere_it_matters():
    c = composed("debug=tiny")
    assert (c["train"]["imgsz"], c["train"]["batch"], c["train"]["workers"]) == (64, 8, 0)
    assert (c["data"]["synthetic"]["train_images"], c["data"]["synthetic"]["val_images"]) == (32, 16)


def test_public_keys_override():
    c = composed("train.epochs=5", "model=yolov5s", "data=coco128", "mlflow.tracking_uri=http://mlflow:5000",
                 "hyp.lr0=0.001", "+mlflow.tags.owner=me")
    assert c["train"]["epochs"] == 5 and c["model"]["cfg"] == "yolov5s.yaml"
    assert c["data"]["name"] == "coco128" and c["train"]["imgsz"] == 640
    assert c["mlflow"]["tracking_uri"] == "http://mlflow:5000" and c["hyp"]["lr0"] == 0.001
    assert c["mlflow"]["tags"] == {"project": "yolov5-mlflow", "owner": "me"}


def test_synthetic_recipe_applies_only_to_synthetic_data():
    synthetic, coco = composed(), composed("data=coco128")
    assert (synthetic["train"]["optimizer"], synthetic["hyp"]["mosaic"]) == ("AdamW", 0.0)
    assert (coco["train"]["optimizer"], coco["hyp"]["mosaic"], coco["hyp"]["lr0"]) == ("SGD", 1.0, 0.01)
    assert composed("train.optimizer=SGD")["train"]["optimizer"] == "SGD"  # the command line still wins


def test_environment_honoured_unless_config_says_otherwise(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    c = composed()
    assert (c["mlflow"]["tracking_uri"], c["mlflow"]["experiment_name"]) == ("http://from-env:5000", "from-env")
    c = composed("mlflow.tracking_uri=http://explicit:5000", "mlflow.experiment_name=explicit")
    assert (c["mlflow"]["tracking_uri"], c["mlflow"]["experiment_name"]) == ("http://explicit:5000", "explicit")


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_every_model_option_names_a_shipped_yaml(model):
    c = composed(f"model={model}")
    assert c["model"]["name"] == model and model_yaml(c["model"]["cfg"]).is_file()


@pytest.mark.parametrize("preset", ["scratch-low", "scratch-med", "scratch-high"])
def test_hyp_presets_match_the_yolov5_package(preset):
    ours = yaml.safe_load((Path("conf/hyp") / f"{preset}.yaml").read_text())
    theirs = yaml.safe_load((yolov5_package_dir() / "data" / "hyps" / f"hyp.{preset}.yaml").read_text())
    assert ours == theirs
    overrides = [f"hyp={preset}", "data=coco128"]  # the synthetic recipe adjusts lr0 and mosaic
    assert composed(*overrides)["hyp"] == theirs


@pytest.mark.parametrize("overrides,message", [
    (["train.epochs=abc"], "train.epochs: Value 'abc' of type 'str' could not be converted to Integer"),
    (["train.epochs=-1"], "train.epochs: must be >= 1, got -1"),
    (["train.imgsz=100"], "train.imgsz: must be a positive multiple of 32"),
    (["model=nope"], "model: no option 'nope' (choose one of: yolov5l, yolov5m, yolov5n, yolov5s, yolov5x)"),
    (["train.workers=-2"], "train.workers: must be >= 0"),
    (["train.optimizer=Lion"], "train.optimizer: must be SGD, Adam or AdamW"),
    (["train.cache=yes"], "train.cache: must be null, ram or disk"),
    (["hyp.lr0=0"], "hyp.lr0: must be > 0"),
    (["mlflow.experiment_name= "], "mlflow.experiment_name: must not be empty"),
    (["train.imgsz=${data.nope}"], "train.imgsz:"),
    (["data.synthetic.train_images=0"], "data.synthetic.train_images: must be >= 1"),
    (["model.cfg=yolov9.yaml"], "model.cfg: no such model yaml: yolov9.yaml"),
    # Hydra's own hints stay in the one line.
    (["mlflow.tags.owner=alice"], "mlflow.tags.owner: no such key; to add it, use +mlflow.tags.owner=alice"),
    (["hyp.lr0=0.01,0.001"], "hyp.lr0=0.01,0.001: several values: add --multirun (-m) to sweep over them"),
    (["train.epoch=5"], "train.epoch: no such key (did you mean train.epochs?)"),
    (["train.device=0,1"], "train.device=0,1: several values: add --multirun (-m) to sweep over them, or quote them "
                           "to train on all of them in one run: train.device='0,1'"),
    (["data.synthetic.train_imags=3"], "data.synthetic.train_imags: no such key (did you mean "
                                       "data.synthetic.train_images?)"),
    (["train.nope=1"], "train.nope: no such key"),
    (["+train.epochs=3"], "train.epochs: already in the config: drop the '+' (train.epochs=3)"),
    (["train.device=gpu"], "train.device: must be ''"),
])
def test_bad_values_raise_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        compose_config(overrides)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: device 0 exists")
def test_a_gpu_this_machine_lacks_is_bad_input_before_any_run():
    with pytest.raises(ConfigError, match=r"^train.device: '0' asks for CUDA device 0, but this machine has no CUDA"):
        compose_config(["train.device=0"])
    with pytest.raises(ConfigError, match=r"^train.device: 'cuda:3' asks for CUDA device 3"):
        compose_config(["train.device=cuda:3"])
    compose_config(["train.device=cpu"])  # and '' picks the CPU here


def test_device_indices_are_read_as_yolov5_reads_them():
    from train.checks import cuda_indices

    assert cuda_indices("0,1") == [0, 1] and cuda_indices("cuda:2") == [2]
    assert cuda_indices("cpu") == cuda_indices("") == cuda_indices("mps") == []
