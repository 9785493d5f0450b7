"""`python -m train [overrides]`: refuse a bad config in one line, then hand over to Hydra.

Hydra reports composition errors over many lines and exits 1, after nothing is created but
also without naming the key plainly. So a single run is composed here first (Hydra's Compose
API, same conf/ and overrides) and checked; only a config that passes reaches `hydra.main`.
Multirun sweeps are checked per trial, inside the task function.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from typing import Callable, List, NoReturn, Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from train.config import CONF_DIR, register_schema, to_container, validate
from train.errors import ConfigError

EXIT_BAD_INPUT = 2


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _describe(exc: Exception) -> str:
    """One line naming the key at fault, from Hydra's and OmegaConf's multi-line errors."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        choices = ", ".join(exc.options or [])
        return f"{group}: no option {option!r} (choose one of: {choices})"
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return f"{cause.full_key}: {_first_line(getattr(cause, 'msg', '') or str(cause))}"
    return _first_line(str(exc))


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """conf/ composed with `overrides` and checked; raises ConfigError with a one-line reason."""
    register_schema()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
        to_container(cfg)  # resolves every interpolation, so a bad one fails here and not mid-run
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_describe(exc)) from exc
    validate(cfg)
    return cfg


def exit_bad_input(error: ConfigError) -> None:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)


def _overrides(argv: Sequence[str]) -> List[str]:
    return [a for a in argv if not a.startswith("-")]


def _is_single_run(argv: Sequence[str]) -> bool:
    # Flags like --help, --cfg or --info make Hydra print instead of run; -m sweeps are checked per trial.
    return not any(a.startswith("-") for a in argv)


def _kubernetes_backend_config(argv: Sequence[str]) -> Path | None:
    """The backend config a sweep on the Kubernetes launcher will use, if that is what argv asks for."""
    from train.k8s_job_template import DEFAULT_BACKEND_CONFIG

    if "hydra/launcher=kubernetes" not in argv:
        return None
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.launcher.backend_config=")]
    return Path(given[-1] if given else DEFAULT_BACKEND_CONFIG)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if _is_single_run(argv):
            compose_config(_overrides(argv))
        backend_config = _kubernetes_backend_config(argv)
        if backend_config:
            from train.k8s_job_template import check

            check(backend_config)  # before a parent run exists and before any image is built
    except ConfigError as error:
        exit_bad_input(error)
    from train.app import hydra_main  # heavy imports only once the config is known to be good

    hydra_main()


def _exit_code(code: object) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # sys.exit("message"), as Python itself would print it
    return 1


def exit_after(entry_point: Callable[[], None]) -> NoReturn:
    """Run `entry_point`, then end the process without Python's module teardown.

    Freeing the modules torch, yolov5 and mlflow import takes 1.7-1.9 s on 2 cores (an interpreter that
    imports them and exits, against one that calls os._exit), after the run's record is closed and every
    file written. What a normal exit does that matters is kept: threading's exit hooks run and non-daemon
    threads joined, atexit handlers run (logging's flush, temporary folders' finalizers, multiprocessing's
    children), standard streams flushed. An exception other
    than SystemExit (a crash) takes the normal path, traceback and all, and so does a process under a
    profiler, tracer or debugger (cProfile, coverage, pdb), which writes its results at the normal exit.
    """
    if sys.getprofile() or sys.gettrace():
        entry_point()
        sys.exit(0)
    try:
        entry_point()
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    # What Python runs first at exit: threading's own exit hooks (concurrent.futures tells its idle workers to
    # stop there; joining them without it would wait forever), then every non-daemon thread joined.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001 - the same handlers Python would run next
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)
