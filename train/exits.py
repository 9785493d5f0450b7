"""The one place where what an entry point returned, or the error it raised, becomes the process's exit.

Every command of the project (`python -m train`, `train.mlproject`, `train.reproduce`,
`train.tracking.sync`, `train.k8s_job_template`) ends through `exit_after`: an int is the exit code,
one of the recipe's errors (train.errors) is printed as its one line and exits with its code.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import Callable, NoReturn, Optional

from train import offline
from train.console import ConsoleTee
from train.errors import BadInput, RecipeError
from train.redact import redact


def refuse(error: RecipeError) -> int:
    """The error's one line on stderr; its exit code. Bad input in a process `mlflow run` started (a Kubernetes
    pod, a Docker run) ends the run it opened FAILED, saying why: nothing else would."""
    if isinstance(error, BadInput) and os.environ.get("MLFLOW_RUN_ID"):
        from train.tracking.run import record_refusal, resolve_tracking_uri

        record_refusal(resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")), os.environ["MLFLOW_RUN_ID"],
                       str(error))
    print(f"error: {redact(str(error))}", file=sys.stderr)
    return error.exit_code


def _run(entry_point: Callable[[], Optional[int]]) -> int:
    try:
        return entry_point() or 0
    except RecipeError as error:
        return refuse(error)
    except SystemExit as exit_:
        return _exit_code(exit_.code)


def exit_after(entry_point: Callable[[], Optional[int]]) -> NoReturn:
    """Run `entry_point` (its console redacted), then exit with its code without Python's module teardown.

    Freeing the modules torch, yolov5 and mlflow import takes 1.7-1.9 s on 2 cores (an interpreter that
    imports them and exits, against one that calls os._exit), after the run's record is closed and every
    file written. What a normal exit does that matters is kept: threading's exit hooks run and non-daemon
    threads joined, atexit handlers run (logging's flush, temporary folders' finalizers, multiprocessing's
    children), standard streams flushed. An exception other than SystemExit (a crash) takes the normal path,
    traceback and all, and so does a process under a profiler, tracer or debugger (cProfile, coverage, pdb),
    which writes its results at the normal exit.
    """
    offline.no_telemetry()  # before any MLflow call: a sweep's parent run is created before any task runs
    with ConsoleTee(None):  # Hydra's and every library's console output, redacted like our own
        if sys.getprofile() or sys.gettrace():
            sys.exit(_run(entry_point))
        code = _run(entry_point)
        # What Python runs first at exit: threading's own exit hooks (concurrent.futures tells its idle workers
        # to stop there; joining them without it would wait forever), then every non-daemon thread joined.
        threading._shutdown()  # noqa: SLF001
        atexit._run_exitfuncs()  # noqa: SLF001 - the same handlers Python would run next
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    os._exit(code)


def _exit_code(code: object) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # sys.exit("message"), as Python itself would print it
    return 1
