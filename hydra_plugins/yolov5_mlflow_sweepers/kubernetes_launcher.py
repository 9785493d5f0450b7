"""A Hydra launcher that runs each sweep trial as its own Kubernetes Job, through MLflow's Kubernetes backend.

    python -m train -m hydra/launcher=kubernetes model=yolov5n,yolov5s hyp.lr0=0.01,0.001

The project's image is built and pushed once per sweep (MLflow's build_docker_image and
push_image_to_registry, as `mlflow run --backend kubernetes --build-image` does), then every trial
becomes a Job from the same template and backend config, at most `max_parallel` at a time. Each pod
trains `python -m train <trial overrides>` and records itself as a child of the sweep's parent run;
the launcher waits for the Jobs and hands each trial's objective (read back from its MLflow run) to
the sweeper. A failed Job is a failed trial, never the end of the sweep.
"""

import copy
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from train.tracking.sweep import PARENT_RUN_ENV, TRIAL_ENV

log = logging.getLogger(__name__)



@dataclass
class KubernetesLauncherConf:
    _target_: str = "hydra_plugins.yolov5_mlflow_sweepers.kubernetes_launcher.KubernetesLauncher"
    backend_config: str = "k8s_backend_config.json"  # kube-context, repository-uri, kube-job-template-path
    project_dir: str = "."  # the MLflow Project built into the image (clean: see README)
    max_parallel: int = 4
    poll_interval_s: float = 5.0
    # A trial whose pod has not started by then (Pending: Unschedulable, an image it cannot pull, a missing Secret)
    # is deleted and counted failed, instead of holding its place in the sweep forever.
    start_timeout_s: float = 900.0


ConfigStore.instance().store(group="hydra/launcher", name="kubernetes", node=KubernetesLauncherConf,
                             provider="yolov5-mlflow")


@dataclass
class _Trial:
    index: int
    overrides: Sequence[str]
    job_name: str = ""
    outcome: Optional[str] = None  # Complete or Failed
    submitted: float = 0.0
    started: bool = False


class KubernetesLauncher(Launcher):
    def __init__(self, backend_config: str, project_dir: str, max_parallel: int, poll_interval_s: float,
                 start_timeout_s: float) -> None:
        from train.k8s_job_template import check

        self.backend_config = check(Path(backend_config))
        self.project_dir = str(Path(project_dir).resolve())
        self.max_parallel = max_parallel
        self.poll_interval_s = poll_interval_s
        self.start_timeout_s = start_timeout_s
        self._image: Optional[tuple] = None  # (tag, digest), built once per sweep

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config

    def _tracking_uri(self) -> str:
        from train.tracking.run import resolve_tracking_uri

        return resolve_tracking_uri(self.config.mlflow.tracking_uri)

    def _pushed_image(self, parent_run_id: str) -> tuple:
        if self._image is None:
            from mlflow.projects import kubernetes as kb
            from mlflow.projects.docker import build_docker_image

            from train.tracking.mlflow_internals import load_project

            project = load_project(self.project_dir)
            import mlflow

            mlflow.set_tracking_uri(self._tracking_uri())  # build_docker_image tags the parent run with the image
            image = build_docker_image(work_dir=self.project_dir, repository_uri=self.backend_config["repository-uri"],
                                       base_image=project.docker_env["image"], run_id=parent_run_id,
                                       build_image=True, docker_auth=None)
            self._image = (project.name, image.tags[0], kb.push_image_to_registry(image.tags[0]))
        return self._image

    def _job(self, trial: _Trial, parent_run_id: str) -> Dict[str, Any]:
        from train.redact import redact, without_credentials
        from train.tracking.mlflow_internals import kubernetes_job_definition

        project_name, tag, digest = self._pushed_image(parent_run_id)
        template = yaml.safe_load(Path(self.backend_config["kube-job-template-path"]).read_text())
        # A login in the tracking URI never goes into a Job in clear text: the pods take theirs from the
        # mlflow-tracking-credentials Secret, which the Job template references (deploy/auth/).
        env = {"MLFLOW_TRACKING_URI": without_credentials(self._tracking_uri()), PARENT_RUN_ENV: parent_run_id,
               TRIAL_ENV: str(trial.index)}
        # A plain argv: unlike `mlflow run`, nothing here is shell-quoted.
        command = ["python", "-m", "train", *(redact(without_credentials(o)) for o in trial.overrides)]
        job = kubernetes_job_definition(project_name, tag, digest, command, env, copy.deepcopy(template))
        for container in job["spec"]["template"]["spec"]["containers"]:
            for variable in container.get("env", []):  # MLflow's own (KUBE_MLFLOW_TRACKING_URI) included
                if "value" in variable:
                    variable["value"] = redact(without_credentials(str(variable["value"])))
        return job

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import kubernetes

        from train.tracking.mlflow_internals import load_kube_context

        parent_run_id = os.environ[PARENT_RUN_ENV]
        load_kube_context(self.backend_config.get("kube-context"))
        api = kubernetes.client.BatchV1Api()
        trials = [_Trial(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
        pending, running = list(trials), []
        log.info(f"Launching {len(trials)} trials as Kubernetes Jobs, at most {self.max_parallel} at once")
        while pending or running:
            while pending and len(running) < self.max_parallel:
                trial = pending.pop(0)
                job = self._job(trial, parent_run_id)
                trial.job_name = job["metadata"]["name"]
                api.create_namespaced_job(namespace=job["metadata"]["namespace"], body=job)
                trial.submitted = time.monotonic()
                log.info(f"\t#{trial.index} : Job {trial.job_name} : {' '.join(filter_overrides(trial.overrides))}")
                running.append((trial, job["metadata"]["namespace"]))
            time.sleep(self.poll_interval_s)
            for trial, namespace in list(running):
                conditions = api.read_namespaced_job_status(trial.job_name, namespace).status.conditions or []
                done = [c.type for c in conditions if c.status == "True" and c.type in ("Complete", "Failed")]
                if not done and not self._started(trial, namespace):
                    done = ["Failed"]
                if done:
                    trial.outcome = done[0]
                    running.remove((trial, namespace))
                    log.info(f"\t#{trial.index} : Job {trial.job_name} : {trial.outcome}")
        return [self._result(trial, parent_run_id) for trial in trials]

    def _started(self, trial: _Trial, namespace: str) -> bool:
        """False once a trial's pod has been waiting to start longer than start_timeout_s: its Job is deleted."""
        import kubernetes

        if trial.started:
            return True
        pods = kubernetes.client.CoreV1Api().list_namespaced_pod(namespace, label_selector=f"job-name={trial.job_name}")
        if any(pod.status.phase != "Pending" for pod in pods.items):
            trial.started = True
            return True
        if time.monotonic() - trial.submitted < self.start_timeout_s:
            return True
        why = "; ".join(_pending_reason(pod) for pod in pods.items) or "no pod was created"
        log.error(f"\t#{trial.index} : Job {trial.job_name} : not started after {self.start_timeout_s:.0f} s "
                  f"({why}): deleted")
        kubernetes.client.BatchV1Api().delete_namespaced_job(trial.job_name, namespace,
                                                              propagation_policy="Background")
        return False

    def _result(self, trial: _Trial, parent_run_id: str) -> JobReturn:
        return JobReturn(overrides=list(trial.overrides), status=JobStatus.COMPLETED, task_name=trial.job_name,
                         _return_value=self._objective(trial, parent_run_id))

    def _objective(self, trial: _Trial, parent_run_id: str) -> float:
        """The trial's objective, as its pod logged it; NaN for a failed trial (the sweeper counts it failed)."""
        from mlflow import MlflowClient

        from train.tracking.names import sanitize_key

        if trial.outcome != "Complete":
            return math.nan
        client = MlflowClient(tracking_uri=self._tracking_uri())
        parent = client.get_run(parent_run_id)
        runs = client.search_runs([parent.info.experiment_id], filter_string=(
            f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.sweep_trial = '{trial.index}'"))
        metric = sanitize_key(self.config.sweep.objective)
        return runs[0].data.metrics.get(metric, math.nan) if runs else math.nan


def _pending_reason(pod) -> str:
    """Why a pod is not running, as the scheduler or kubelet put it."""
    for condition in pod.status.conditions or []:
        if condition.status == "False" and condition.reason:
            return f"{condition.reason}: {condition.message}"
    for status in pod.status.container_statuses or []:
        if status.state and status.state.waiting and status.state.waiting.reason:
            return f"{status.state.waiting.reason}: {status.state.waiting.message or ''}".rstrip(": ")
    return "Pending"
