"""Every private MLflow API the recipe uses, in one place: checked against MLflow 3.17.2 (requirements.txt).

MLflow may change or drop any of these in a minor release; an upgrade of the pin starts by running the
tests that reach them (tests/unit/test_mlflow_internals.py, the Kubernetes launcher's end-to-end test).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

CHECKED_WITH = "3.17.2"


def forget_active_run() -> None:
    """Drop the fluent API's active run without ending it on the server (which is unreachable: mlflow.end_run
    would spend minutes retrying set_terminated). The run's end state waits for `python -m train.tracking.sync`.

    Its system-metrics monitor is told to stop too, without waiting for it: mlflow.end_run would have stopped it
    (SystemMetricsMonitor.finish, which joins the thread and then flushes to the server), and left running it would
    go on sampling and, between samples, retrying the unreachable server for minutes. The thread is a daemon and
    stops at its next check of the signal; a request of it in flight delays nothing but itself."""
    from mlflow.tracking.fluent import _active_run_stack, run_id_to_system_metrics_monitor

    stack = _active_run_stack.get()
    for run in stack:
        monitor = run_id_to_system_metrics_monitor.pop(run.info.run_id, None)
        if monitor is not None:
            monitor._shutdown_event.set()
    stack.clear()
    os.environ.pop("MLFLOW_RUN_ID", None)


def system_metrics_monitor(run_id: str):
    """The SystemMetricsMonitor mlflow.start_run(log_system_metrics=True) started for `run_id`, or None."""
    from mlflow.tracking.fluent import run_id_to_system_metrics_monitor

    return run_id_to_system_metrics_monitor.get(run_id)


def load_project(project_dir: str):
    """MLproject parsed as `mlflow run` parses it (name, docker_env, entry points)."""
    from mlflow.projects._project_spec import load_project as _load

    return _load(project_dir)


def kubernetes_job_definition(project_name: str, image_tag: str, image_digest: str, command: List[str],
                              env: Dict[str, str], job_template: Dict[str, Any]) -> Dict[str, Any]:
    """The Job `mlflow run --backend kubernetes` would submit: its name, image, command and env filled in."""
    from mlflow.projects.kubernetes import _get_kubernetes_job_definition

    return _get_kubernetes_job_definition(project_name, image_tag, image_digest, command, env, job_template)


def load_kube_context(context: Optional[str]) -> None:
    """The kubeconfig context MLflow's Kubernetes backend would use (in-cluster config when there is none)."""
    from mlflow.projects.kubernetes import _load_kube_context

    _load_kube_context(context=context)


def remember_package_map(cache_dir: Path) -> None:
    """MLflow's map of modules to installed distributions (importlib_metadata.packages_distributions: 0.7 s of
    reading every distribution's file list, made at the first model save or load of a process, for its check of
    the model's requirements against what is installed), kept under `cache_dir` for the packages as they are
    (lineage.packages_state) and handed to MLflow from there: made once per environment, not once per run."""
    import json

    from mlflow.utils import requirements_utils

    from train.tracking.lineage import kept_per_environment

    if requirements_utils._MODULES_TO_PACKAGES is not None:
        return

    def make() -> str:
        requirements_utils._init_modules_to_packages_map()
        return json.dumps(requirements_utils._MODULES_TO_PACKAGES)

    def usable(text: str) -> bool:
        try:
            return isinstance(json.loads(text), dict)
        except ValueError:
            return False

    requirements_utils._MODULES_TO_PACKAGES = json.loads(kept_per_environment(cache_dir, ".modules.json", make,
                                                                              usable))


def check_serving(model_dir: Path) -> None:
    """What Model.log does with a model's input example before it returns: load the model from `model_dir` and
    predict on the example through the serving path's JSON parsing; a failure is logged as a warning by
    "mlflow.models.model"'s logger, never raised (as in Model.log)."""
    import logging

    from mlflow.models import Model
    from mlflow.models.utils import _validate_serving_input

    serving_input = Model.load(str(model_dir)).get_serving_input(str(model_dir))
    if serving_input is None:
        return
    try:
        _validate_serving_input(model_uri=str(model_dir), serving_input=serving_input)
    except Exception as error:  # noqa: BLE001 - reported as Model.log reports it
        logging.getLogger("mlflow.models.model").warning(f"Failed to validate serving input example: {error}")
