"""Which keys a resume or a reproduction takes from the run's record and which from this machine."""

from __future__ import annotations

import pytest

from train.compose import compose_config
from train.config import to_container
from train.errors import ConfigError
from train.tracking.resume import check_overrides, merged


def test_the_record_wins_except_for_local_keys_and_machine_keys_given():
    current = to_container(compose_config(["train.device=cpu", "train.workers=0", "paths.cache_dir=/here"]))
    recorded = to_container(compose_config(["train.epochs=7", "hyp.lr0=0.005", "train.device=0",  # a GPU machine's
                                            "train.workers=8", "paths.cache_dir=/there"], checked=False))
    recorded["train"].pop("resume")  # a run recorded before the key existed keeps today's default
    result = merged(current, recorded, overrides=["train.device=cpu"])
    assert result["train"]["epochs"] == 7 and result["hyp"]["lr0"] == 0.005
    assert result["train"]["device"] == "cpu"  # given on the command line
    assert result["train"]["workers"] == 8  # not given: the record's (it changes the augmentations' randomness)
    assert result["paths"]["cache_dir"] == "/here" and result["train"]["resume"] is None


def test_only_machine_and_local_keys_may_be_given():
    check_overrides(["train.resume=x", "train.device=0", "train.workers=2", "paths.cache_dir=/c",
                     "mlflow.tracking_uri=http://h", "hydra.run.dir=/d"], "train.resume")
    for override in ["train.epochs=5", "hyp.lr0=0.1", "data=coco128", "+mlflow.tags.x=y"]:
        with pytest.raises(ConfigError, match=f"so {override.split('=')[0].lstrip('+')} cannot be given"):
            check_overrides([override], "train.resume")
