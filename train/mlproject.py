"""MLproject's `main` entry point: its declared parameters become Hydra overrides of `python -m train`.

MLflow quotes each parameter into the command line, so the free `overrides` string arrives as one
argument and is split here with shell rules (no shell runs it). MLflow appends an undeclared
`-P key=value` as `--key value`: that is refused in one line, like any other bad input.

MLflow's Kubernetes backend shell-quotes every argument of the Job's `command` although no shell
ever reads it (an empty value arrives as the two characters ''). The job template says so with
TRAIN_ARGS_SHELL_QUOTED=true, and the quoting is undone here.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from typing import List, NoReturn, Sequence

from train.cli import main as train_main
from train.config import CONF_DIR
from train.exits import exit_after
from train.errors import ConfigError

# MLproject parameter -> config key. An empty value leaves the config's default in place.
PARAMETERS = {
    "epochs": "train.epochs",
    "batch": "train.batch",
    "imgsz": "train.imgsz",
    "model": "model",
    "data": "data",
    "weights": "model.weights",
    "device": "train.device",
}
# What Hydra reads unquoted in a value; anything else (a URL's '?', '=', '&', a space) is quoted.
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_./:@+\-]*$")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose every error is one line, `<what>: <message> (<hint>)`: a ConfigError, exit 2 (train.exits)."""

    def __init__(self, *args, what: str, hint: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.what, self.hint = what, hint

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.what}: {message} ({self.hint})")


def _number(value: str) -> str:
    # MLflow's float params arrive as written ('50') or as floats ('50.0') when a default is rendered.
    return value[:-2] if value.endswith(".0") and value[:-2].isdigit() else value


def _value(value: str) -> str:
    """A parameter's value as one Hydra value: `-P device=0,1` is two GPUs for one run, never a sweep; a URL
    with a query string is one string."""
    value = _number(value)
    if _PLAIN_VALUE.match(value) or value.startswith(("'", '"', "[")):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _data_option(value: str) -> List[str]:
    """-P data=<a data option (synthetic, coco128, yolo)> or <where a YOLOv5 dataset is>: data=yolo data.source=..."""
    if (CONF_DIR / "data" / f"{value}.yaml").is_file():
        return [f"data={value}"]
    return ["data=yolo", f"data.source={_value(value)}"]


def unquote(argv: Sequence[str]) -> List[str]:
    return [shlex.split(arg)[0] if arg.startswith("'") else arg for arg in argv]


def to_overrides(argv: Sequence[str]) -> List[str]:
    if os.environ.get("TRAIN_ARGS_SHELL_QUOTED") == "true":
        argv = unquote(argv)
    parser = OneLineParser(prog="train.mlproject", add_help=False, what="MLproject parameters",
                           hint=f"declared: {', '.join([*PARAMETERS, 'overrides', 'sweep'])}")
    for name in PARAMETERS:
        parser.add_argument(f"--{name}", default="")
    parser.add_argument("--overrides", default="")
    parser.add_argument("--sweep", default=None)
    args = parser.parse_args(argv)
    if args.sweep is not None:  # entry point `sweep`: its one param is a Hydra multirun's overrides
        try:
            return ["--multirun", *shlex.split(args.sweep)]
        except ValueError as exc:
            parser.error(f"sweep: {exc}")
    overrides = []
    for name, key in PARAMETERS.items():
        value = getattr(args, name)
        if value:
            overrides += _data_option(value) if name == "data" else [f"{key}={_value(value)}"]
    try:
        extra = shlex.split(args.overrides)
    except ValueError as exc:
        parser.error(f"overrides: {exc}")
    owned = {key: name for name, key in PARAMETERS.items()}
    for override in extra:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in owned:
            # One source per key: MLflow has already logged the -P value as the run's param.
            parser.error(f"overrides sets {key}, which has its own parameter: use -P {owned[key]}=...")
    return overrides + extra


def main() -> int:
    return train_main(to_overrides(sys.argv[1:]))


if __name__ == "__main__":
    exit_after(main)
