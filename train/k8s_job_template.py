"""Check a Kubernetes backend config and its Job template before anything is built or pushed.

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


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_BACKEND_CONFIG)
    check(path)
    print(f"{path}: backend config and Job template look right")
    return EXIT_OK


if __name__ == "__main__":
    from train.exits import exit_after

    exit_after(main)
