"""conf/ composed with a command line's overrides, and Hydra's multi-line errors as one line.

Hydra reports a bad override over several lines (and exits 1); the one line kept here names the key
at fault and keeps the hint Hydra would give: `+key=value` to add a key, `--multirun` to sweep over
several values, and a close match for a mistyped key.
"""

from __future__ import annotations

import difflib
import re
from typing import List, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException

from train.checks import validate
from train.config import CONF_DIR, register_schema, to_container
from train.errors import ConfigError

_AMBIGUOUS = re.compile(r"Ambiguous value for argument '(?P<arg>[^']+)'")
_ALREADY_THERE = re.compile(r"An item is already at '(?P<key>[^']+)'")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _compose(overrides: Sequence[str]) -> DictConfig:
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _value_of(key: str, overrides: Sequence[str]) -> str:
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+~") == key:
            return value
    return "..."


def _unknown_key(key: str, overrides: Sequence[str]) -> str:
    """An override of a key the config does not have: an open mapping takes it with '+', a typo gets a match."""
    parent, _, leaf = key.rpartition(".")
    try:
        node = _compose([])
        node = OmegaConf.select(node, parent) if parent else node
    except (HydraException, OmegaConfBaseException):
        node = None
    if isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:  # e.g. mlflow.tags: any key goes
        return f"{key}: no such key; to add it, use +{key}={_value_of(key, overrides)}"
    keys: List[str] = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.75)
    return f"{key}: no such key" + (f" (did you mean {parent + '.' if parent else ''}{close[0]}?)" if close else "")


def describe(exc: Exception, overrides: Sequence[str]) -> str:
    """One line naming the override at fault, with Hydra's own hint where it gives one."""
    text = str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        return f"{group}: no option {option!r} (choose one of: {', '.join(exc.options or [])})"
    if match := _AMBIGUOUS.search(text):
        arg = match["arg"]
        key, _, value = arg.partition("=")
        one_run = (f"quote them to train on all of them in one run: {key}='{value}'" if key == "train.device"
                   else f"write {key}=[{value}] for a list")
        return f"{arg}: several values: add --multirun (-m) to sweep over them, or {one_run}"
    if match := _ALREADY_THERE.search(text):
        key = match["key"]
        return f"{key}: already in the config: drop the '+' ({key}={_value_of(key, overrides)})"
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    full_key: Optional[str] = getattr(cause, "full_key", None)
    if isinstance(cause, ConfigAttributeError) and full_key:
        return _unknown_key(full_key, overrides)
    if isinstance(cause, OmegaConfBaseException) and full_key:
        return f"{full_key}: {_first_line(getattr(cause, 'msg', '') or str(cause))}"
    return _first_line(text)


def compose_config(overrides: Sequence[str], checked: bool = True) -> DictConfig:
    """conf/ composed with `overrides` and (unless `checked` is false) validated here; ConfigError with a
    one-line reason otherwise."""
    try:
        cfg = _compose(overrides)
        to_container(cfg)  # resolves every interpolation, so a bad one fails here and not mid-run
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(describe(exc, overrides)) from exc
    if checked:
        validate(cfg)
    return cfg
