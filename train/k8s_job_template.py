"""Check a Kubernetes backend config, its Job template and the cluster before anything is built or pushed.

MLflow's Kubernetes backend reads the template only after building and pushing the image (minutes),
and a wrong template then fails as a KeyError deep in its code. Checked here first: by the sweep's
Kubernetes launcher, and by `python -m train.k8s_job_template [k8s_backend_config.json]` before
`mlflow run --backend kubernetes`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

import yaml

from train.errors import EXIT_OK, ConfigError

DEFAULT_BACKEND_CONFIG = "k8s_backend_config.json"


def _load_backend_config(path: Path) -> Dict[str, Any]:
    try:
        backend = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"backend config: cannot read {path} as JSON: {error}") from None
    for key in ("kube-job-template-path", "repository-uri"):
        if not isinstance(backend, dict) or not backend.get(key):
            raise ConfigError(f"backend config: {path} has no {key!r}")
    return backend


def _require(ok: bool, template: Path, problem: str) -> None:
    if not ok:
        raise ConfigError(f"kube-job-template-path: {template}: {problem}")


def check(backend_config: Path) -> Dict[str, Any]:
    """The backend config, if it and its Job template are what MLflow's Kubernetes backend needs; its
    kube-job-template-path resolved against the backend config's folder."""
    backend = _load_backend_config(backend_config)
    template = Path(backend["kube-job-template-path"])
    if not template.is_absolute():
        template = backend_config.parent / template
    try:
        job = yaml.safe_load(template.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"kube-job-template-path: cannot read {template} as YAML: "
                          f"{str(error).splitlines()[0]}") from None
    _require(isinstance(job, dict) and job.get("apiVersion") == "batch/v1" and job.get("kind") == "Job", template,
             "must be a batch/v1 Job")
    _require(bool((job.get("metadata") or {}).get("namespace")), template, "metadata.namespace is missing")
    pod = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers = pod.get("containers")
    _require(isinstance(containers, list) and bool(containers) and isinstance(containers[0], dict), template,
             "spec.template.spec.containers must list the training container (MLflow fills in the first)")
    _require(pod.get("restartPolicy") in ("Never", "OnFailure"), template,
             "spec.template.spec.restartPolicy must be Never or OnFailure (a Job's pods cannot use Always)")
    return {**backend, "kube-job-template-path": str(template)}


def _requests(job: Dict[str, Any]) -> Dict[str, str]:
    """What the scheduler needs a node to have free: each request, and each limit that has no request."""
    resources = job["spec"]["template"]["spec"]["containers"][0].get("resources") or {}
    return {**(resources.get("limits") or {}), **(resources.get("requests") or {})}


def check_schedulable(backend: Dict[str, Any]) -> str:
    """ConfigError when no node of the backend's cluster could ever hold the training pod's requests (a GPU the
    cluster does not have): such a Job stays Pending, and MLflow waits on it without a word. What was checked, in
    a line, when it fits or the nodes cannot be listed (RBAC often forbids it: the check is then skipped)."""
    import kubernetes
    from kubernetes.utils.quantity import parse_quantity

    from train.tracking.mlflow_internals import load_kube_context

    job = yaml.safe_load(Path(backend["kube-job-template-path"]).read_text())
    wanted = {key: parse_quantity(value) for key, value in _requests(job).items()}
    try:
        load_kube_context(backend.get("kube-context"))
    except Exception as error:  # noqa: BLE001 - no kubeconfig here: only the files could be checked
        return f"the cluster not checked (no kube context: {str(error).splitlines()[0][:200]})"
    try:
        nodes = kubernetes.client.CoreV1Api().list_node(_request_timeout=30).items
    except kubernetes.client.ApiException as error:
        return f"nodes not checked (the cluster answered {error.status} {error.reason} to listing them)"
    except Exception as error:  # noqa: BLE001 - unreachable: the submission would fail the same way
        raise ConfigError(f"kube-context {backend.get('kube-context')!r}: the cluster cannot be reached: "
                          f"{str(error).splitlines()[0][:200]}") from None
    for node in nodes:
        free = node.status.allocatable or {}
        if all(parse_quantity(free.get(key, "0")) >= amount for key, amount in wanted.items()):
            return f"node {node.metadata.name} can hold the pod's requests"
    summary = ", ".join(f"{key}: {value}" for key, value in _requests(job).items())
    raise ConfigError(f"kube-job-template-path: no node of the cluster ({len(nodes)} nodes) has what the training "
                      f"pod requests ({summary}): its Job would stay Pending (Unschedulable) with no end; change the "
                      f"template's resources, or submit anyway where an autoscaler adds such nodes")


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_BACKEND_CONFIG)
    backend = check(path)
    print(f"{path}: backend config and Job template look right; {check_schedulable(backend)}")
    return EXIT_OK


if __name__ == "__main__":
    from train.exits import exit_after

    exit_after(main)
