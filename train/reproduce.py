"""`python -m train.reproduce <run id> [--allow-mismatch] [overrides]`: train a run again from its record alone.

The run's recorded config is what trains (only this machine's keys may be overridden: train.device,
train.workers, paths.*, mlflow connection settings); its code version and data digests are checked
first; the new run is tagged `reproduces=<run id>`. Then each metric is compared, epoch by epoch.
"""

from __future__ import annotations

import os
import sys
from typing import List, Sequence

from train.cli import main as train_main
from train.exits import exit_after
from train.errors import EXIT_OK
from train.mlproject import OneLineParser, unquote

PROG = "python -m train.reproduce"


def _print_differences(tracking_uri: str, original: str, reproduction: str) -> None:
    from mlflow import MlflowClient

    from train.tracking.reproduce import metric_differences

    rows = metric_differences(MlflowClient(tracking_uri=tracking_uri), original, reproduction)
    width = max(len(key) for key, *_ in rows)
    print(f"\n{'metric':<{width}}  {'original':>12}  {'reproduction':>12}  {'max |diff| over epochs':>22}")
    for key, a, b, worst in rows:
        print(f"{key:<{width}}  {a:>12.6g}  {b:>12.6g}  {worst:>22.3g}")
    identical = all(worst == 0 for *_, worst in rows)
    print(f"\nrun {reproduction} reproduces {original}: every metric "
          f"{'identical at every epoch' if identical else 'differs somewhere (see above)'}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0], what=PROG,
                           hint=f"usage: {PROG} <run id> [--allow-mismatch] [overrides]")
    parser.add_argument("run_id", help="the MLflow run to train again")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="train even when today's code or data differ from the run's")
    parser.add_argument("overrides", nargs="*", default=[], help="this machine's keys only, e.g. train.device=0")
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("TRAIN_ARGS_SHELL_QUOTED") == "true":  # MLflow's Kubernetes backend quoted each one
        argv = unquote(argv)
    args = parser.parse_intermixed_args(argv)  # --allow-mismatch before, between or after the rest
    train_argv: List[str] = [f"reproduce.run_id={args.run_id}", *args.overrides]
    if args.allow_mismatch:
        train_argv.append("reproduce.allow_mismatch=true")
    code = train_main(train_argv)
    if code != EXIT_OK:
        return code

    import mlflow

    run = mlflow.last_active_run()
    _print_differences(mlflow.get_tracking_uri(), args.run_id, run.info.run_id)
    return EXIT_OK


if __name__ == "__main__":
    exit_after(main)
