"""`python -m train [overrides]`: the command line to a composed, checked config, then Hydra; an exit code out.

A single run's config is composed and checked here first (train.compose), so bad input is refused in
one line before Hydra starts and before any run exists; then Hydra runs the task (train.task), which
returns an Outcome. A multirun's trials are checked inside the task, and its exit code is the sweep's
(train.tracking.sweep); train.exits ends the process with it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

import hydra
from omegaconf import DictConfig

from train.config import CONF_DIR, register_schema
from train.errors import EXIT_INTERRUPTED, EXIT_OK, Outcome, RecipeError
from train.exits import refuse

register_schema()
_outcomes: List[Outcome] = []  # what this process's task calls returned (a single run, or in-process trials)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """Hydra's entry: the task's outcome is kept for the exit code; sweepers get the objective."""
    from train.task import train_and_track

    outcome = train_and_track(cfg)
    _outcomes.append(outcome)
    return outcome.objective


def _overrides(argv: Sequence[str]) -> List[str]:
    return [a for a in argv if not a.startswith("-")]


def _is_single_run(argv: Sequence[str]) -> bool:
    # Flags like --help, --cfg or --info make Hydra print instead of run; -m sweeps are checked per trial.
    return not any(a.startswith("-") for a in argv)


def _kubernetes_backend_config(argv: Sequence[str]) -> Optional[Path]:
    """The backend config a sweep on the Kubernetes launcher will use, if that is what argv asks for."""
    from train.k8s_job_template import DEFAULT_BACKEND_CONFIG

    if "hydra/launcher=kubernetes" not in argv:
        return None
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.launcher.backend_config=")]
    return Path(given[-1] if given else DEFAULT_BACKEND_CONFIG)


def check_before_hydra(argv: Sequence[str]) -> None:
    """Everything that can be refused before Hydra starts; raises a RecipeError."""
    if _is_single_run(argv):
        from train.compose import compose_config

        compose_config(_overrides(argv))
    backend_config = _kubernetes_backend_config(argv)
    if backend_config:
        from train.k8s_job_template import check, check_schedulable

        # Before a parent run exists and before any image is built: the files, then the cluster's nodes.
        print(f"Kubernetes: {check_schedulable(check(backend_config))}", file=sys.stderr)


def run_hydra(argv: Sequence[str]) -> int:
    """Hydra on `argv` (it reads sys.argv); the exit code of what ran."""
    from train.tracking import sweep

    sys.argv = [sys.argv[0], *argv]
    _outcomes.clear()
    sweep.last_sweep_outcome = None
    hydra_main()
    if sweep.last_sweep_outcome is not None:  # a multirun: the sweep's verdict over all its trials
        return sweep.last_sweep_outcome.exit_code
    return _outcomes[-1].exit_code if _outcomes else EXIT_OK  # --help, --cfg ...: nothing ran


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        check_before_hydra(argv)
        return run_hydra(argv)
    except RecipeError as error:
        return refuse(error)
    except KeyboardInterrupt:  # a sweep interrupted between or inside trials
        return EXIT_INTERRUPTED
