"""Every private MLflow API the recipe uses, in one place: checked against MLflow 3.17.2 (requirements.txt).

MLflow may change or drop any of these in a minor release; an upgrade of the pin starts by running the
tests that reach them (tests/unit/test_mlflow_internals.py, the Kubernetes launcher's end-to-end test).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

CHECKED_WITH = "3.17.2"


def forget_active_run() -> None:
    """Drop the fluent API's active run without ending it on the server (which is unreachable: mlflow.end_run
    would spend minutes retrying set_terminated). The run's end state waits for `python -m train.tracking.sync`."""
    from mlflow.tracking.fluent import _active_run_stack

    _active_run_stack.get().clear()
    os.environ.pop("MLFLOW_RUN_ID", None)


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
