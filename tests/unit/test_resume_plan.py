"""Which keys a resume takes from the run's record and which from this machine."""

from __future__ import annotations

from train.cli import compose_config
from train.config import to_container
from train.tracking.resume import _is_machine_key, _merged


def test_the_record_wins_except_for_this_machines_keys():
    current = to_container(compose_config(["train.device=cpu", "train.workers=0", "paths.cache_dir=/here"]))
    recorded = to_container(compose_config(["train.epochs=7", "hyp.lr0=0.005", "train.device=0",
                                            "paths.cache_dir=/there"]))
    recorded["train"].pop("resume")  # a run recorded before the key existed keeps today's default
    merged = _merged(current, recorded)
    assert merged["train"]["epochs"] == 7 and merged["hyp"]["lr0"] == 0.005
    assert merged["train"]["device"] == "cpu" and merged["train"]["workers"] == 0
    assert merged["paths"]["cache_dir"] == "/here" and merged["train"]["resume"] is None


def test_only_machine_keys_may_be_given_with_a_resume():
    assert all(map(_is_machine_key, ["train.resume", "train.device", "paths.cache_dir", "mlflow.tracking_uri",
                                     "hydra.run.dir"]))
    assert not any(map(_is_machine_key, ["train.epochs", "hyp.lr0", "data", "mlflow.tags.x"]))
