"""A STAND-IN for a Kubernetes cluster, for tests only: no API server, kubelet or kind node can run here.

It is small, and strict where the recipe relies on Kubernetes:
- API: the batch/v1 Job endpoints MLflow's backend and the sweep launcher call (create, read status, delete with
  its propagation policy), pods listed by label, the `pods/eviction` subresource, and nodes.
- Job controller: each attempt is a new pod; `backoffLimit`, `podFailurePolicy` (FailJob/Ignore/Count on exit
  codes and pod conditions), `activeDeadlineSeconds`, exponential backoff between attempts (10 s doubling, as the
  controller does), and conditions as batch/v1 reports them: `FailureTarget` then `Failed` with reason
  `BackoffLimitExceeded`, `PodFailurePolicy` or `DeadlineExceeded`; `Complete`.
- Scheduler: a pod whose requests no node can hold (a GPU, more CPU than the node has) stays Pending with
  `PodScheduled=False`, reason `Unschedulable`, and the scheduler's message. It never runs.
- Kubelet (the real Docker engine): the image is pulled from its registry by digest, never taken from the
  engine's tags; each pod is its own container, with its hostname, env (values, Secret keys, the downward API's
  nodeName and name), user, /dev/shm, and its limits (`--memory`, so the kernel OOM-kills it: exit 137,
  `OOMKilled`). Termination is SIGTERM to PID 1, then SIGKILL after `terminationGracePeriodSeconds`
  (`docker stop --time`). An eviction adds `DisruptionTarget` and terminates the same way; a node loss kills
  without grace, and the pod gets `DisruptionTarget` when the taint manager would evict it.
- Network: pods run on a network of their own and reach services only by their in-cluster names
  (`<svc>.<ns>.svc.cluster.local`): a container started as a Deployment (`deployment`) answers to its Service's
  names; a process on this machine (moto for MinIO) is given a Service name through a port forwarder on the
  network's gateway, as kube-proxy gives a Service a virtual IP. The submitter's loopback is not reachable.
- Any exception inside the stand-in fails the Job (reason `StandInError`): no test waits for a timeout to learn it.

Not stood in for: more than one node, ConfigMaps, `envFrom` in Jobs, init containers, probes other than the
Deployment's readiness probe, the 5-minute wait before a lost node's pods are evicted (`node_loss_eviction_s`).
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import string
import subprocess
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

from kubernetes.utils.quantity import parse_quantity

from testbed.servers import free_port

NODE_NAME = "kube-standin-node"
CLUSTER_DOMAIN = "svc.cluster.local"
BACKOFF_S = 10.0  # the Job controller's first delay before a replacement pod; doubles, capped at 6 minutes


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _docker(*args: str, check: bool = True, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"docker {args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def service_names(name: str, namespace: str) -> List[str]:
    """The names a pod in `namespace` resolves a Service by."""
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.{CLUSTER_DOMAIN}"]


def _condition(type_: str, reason: str = "", message: str = "", status: str = "True") -> dict:
    now = _now()
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastProbeTime": now,
            "lastTransitionTime": now}


@dataclass
class Node:
    name: str = NODE_NAME
    allocatable: Dict[str, str] = field(default_factory=lambda: {
        "cpu": str(os.cpu_count()), "memory": str(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")),
        "pods": "110"})

    def manifest(self) -> dict:
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {
            "kubernetes.io/hostname": self.name}}, "status": {"allocatable": self.allocatable,
                                                             "capacity": self.allocatable}}


@dataclass
class Pod:
    name: str
    namespace: str
    labels: Dict[str, str]
    spec: dict
    phase: str = "Pending"
    conditions: List[dict] = field(default_factory=list)
    container_state: dict = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    exit_code: Optional[int] = None
    logs: str = ""
    node: str = ""
    started: float = 0.0
    ended: float = 0.0
    lost: bool = False  # its node went away: no kubelet reports on it any more
    image_id: str = ""  # the digest the kubelet pulled

    @property
    def container(self) -> dict:
        return self.spec["containers"][0]

    @property
    def docker_name(self) -> str:
        return f"standin-{self.namespace}-{self.name}"

    def has_condition(self, type_: str, status: str = "True") -> bool:
        return any(c["type"] == type_ and c["status"] == status for c in self.conditions)

    def manifest(self) -> dict:
        state = {"name": self.container["name"], "image": self.container["image"], "imageID": self.image_id,
                 "ready": self.phase == "Running",
                 "restartCount": 0, "state": self.container_state}
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "labels": self.labels},
                "spec": {**self.spec, "nodeName": self.node or None},
                "status": {"phase": self.phase, "conditions": self.conditions, "containerStatuses": [state]}}


@dataclass
class SubmittedJob:
    manifest: dict
    status: dict = field(default_factory=dict)
    pods: List[Pod] = field(default_factory=list)
    deleted: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.manifest["metadata"]["name"]

    @property
    def pod(self) -> Optional[Pod]:
        """The newest attempt's pod."""
        return self.pods[-1] if self.pods else None

    @property
    def logs(self) -> str:
        return "\n".join(f"--- pod {p.name} ---\n{p.logs}" for p in self.pods)

    @property
    def exit_code(self) -> Optional[int]:
        return self.pod.exit_code if self.pod else None

    def condition(self, type_: str) -> Optional[dict]:
        return next((c for c in self.status.get("conditions", []) if c["type"] == type_), None)

    @property
    def started(self) -> float:
        return min((p.started for p in self.pods if p.started), default=0.0)

    @property
    def ended(self) -> float:
        return max((p.ended for p in self.pods if p.ended), default=0.0)


class _Forwarder(threading.Thread):
    """kube-proxy's part for a Service whose endpoint is a process on this machine: TCP from the pods'
    network (the gateway's address and the Service's port) to 127.0.0.1:<target>."""

    def __init__(self, listen: Tuple[str, int], target: Tuple[str, int]) -> None:
        super().__init__(daemon=True)
        self.target = target
        self.sock = socket.create_server(listen, reuse_port=False)

    def run(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@dataclass
class Deployment:
    """One replica of a Deployment's pod, run as a container on the cluster network under its Service's names,
    its port published on this machine's loopback (what `kubectl port-forward` gives a user)."""

    container_name: str
    port: int
    host_port: int = 0
    volumes: List[str] = field(default_factory=list)

    @property
    def host_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def kill(self) -> None:
        """The container dies without grace (OOM, a crash, its node gone)."""
        _docker("kill", "--signal=KILL", self.container_name)

    def restart(self, readiness: Callable[[], bool], timeout_s: float = 180) -> float:
        """The kubelet starts the container again (restartPolicy Always); seconds until it is ready."""
        started = time.monotonic()
        _docker("start", self.container_name)
        _wait(readiness, timeout_s, f"{self.container_name} ready again", lambda: self.logs())
        return time.monotonic() - started

    def logs(self) -> str:
        proc = _docker("logs", self.container_name, check=False)
        return proc.stdout + proc.stderr


def _wait(ready: Callable[[], bool], timeout_s: float, what: str, why: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout_s} s\n{why()[-3000:]}")
        time.sleep(0.5)


class KubeStandIn:
    def __init__(self, nodes: Optional[List[Node]] = None, backoff_s: float = BACKOFF_S,
                 node_loss_eviction_s: float = 0.0) -> None:
        self.nodes = nodes if nodes is not None else [Node()]
        self.jobs: Dict[str, SubmittedJob] = {}
        self.deleted_jobs: List[SubmittedJob] = []
        self.secrets: Dict[str, Dict[str, str]] = {}  # the namespace's Secrets: name -> key -> value
        self.backoff_s = backoff_s
        # A real cluster waits node-monitor-grace-period (40 s) plus the unreachable taint's toleration (300 s).
        self.node_loss_eviction_s = node_loss_eviction_s
        self.network = f"kube-standin-{os.getpid()}-{random.randrange(1 << 30):x}"
        self.gateway = ""
        self._hosts: Dict[str, str] = {}  # in-cluster name -> address (Services backed by host processes)
        self._forwarders: List[_Forwarder] = []
        self._deployments: List[Deployment] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "KubeStandIn":
        _docker("network", "create", "--driver=bridge", self.network)
        inspect = json.loads(_docker("network", "inspect", self.network).stdout)[0]
        self.gateway = inspect["IPAM"]["Config"][0]["Gateway"]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def _remove_pods(self) -> None:
        for job in [*self.jobs.values(), *self.deleted_jobs]:
            job.deleted.set()
            for pod in job.pods:
                _docker("rm", "--force", pod.docker_name, check=False)
            job.done.wait(timeout=60)

    def forget_jobs(self) -> None:
        """Every Job and pod gone (containers removed): what the next test starts from."""
        self._remove_pods()
        self.jobs.clear()
        self.deleted_jobs.clear()

    def __exit__(self, *exc) -> None:
        """Containers, volumes and the network removed; the Jobs' records stay for the test to read."""
        self._server.shutdown()
        self._remove_pods()
        for deployment in self._deployments:
            _docker("rm", "--force", "--volumes", deployment.container_name, check=False)
            for volume in deployment.volumes:
                _docker("volume", "rm", "--force", volume, check=False)
        for forwarder in self._forwarders:
            forwarder.close()
        _docker("network", "rm", self.network, check=False)

    def kubeconfig(self, path: Path, context: str) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": context, "context": {"cluster": "standin", "user": "standin"}}],
        }))
        return path

    # --- Services -----------------------------------------------------------------------------------

    def host_service(self, name: str, namespace: str, port: int, target_port: int) -> str:
        """A Service whose endpoint is a process on this machine's loopback; its in-cluster URL."""
        forwarder = _Forwarder((self.gateway, port), ("127.0.0.1", target_port))
        forwarder.start()
        self._forwarders.append(forwarder)
        for alias in service_names(name, namespace):
            self._hosts[alias] = self.gateway
        return f"http://{name}.{namespace}.{CLUSTER_DOMAIN}:{port}"

    def deployment(self, manifest: dict, service: dict, image: str) -> Deployment:
        """Runs a Deployment's pod (one replica) from `image`, reachable by `service`'s names; its
        PersistentVolumeClaims become Docker volumes that outlive the container's restarts."""
        namespace = manifest["metadata"].get("namespace", "kubeflow")
        pod = manifest["spec"]["template"]["spec"]
        [container] = pod["containers"]
        name = f"{self.network}-{manifest['metadata']['name']}"
        command = ["run", "--detach", f"--name={name}", f"--network={self.network}",
                   *(f"--network-alias={alias}" for alias in service_names(service["metadata"]["name"], namespace)),
                   *self._add_hosts()]
        user = pod.get("securityContext", {}).get("runAsUser")
        if user is not None:
            command.append(f"--user={user}")
        volumes = []
        claims = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = f"{name}-{mount['name']}"
            assert "persistentVolumeClaim" in claims[mount["name"]], "only PVC volumes are stood in for"
            _docker("volume", "create", volume)
            # A fresh PVC belongs to fsGroup; a Docker volume to root: hand it over first, as fsGroup would.
            _docker("run", "--rm", "--user=0", "-v", f"{volume}:/v", "--entrypoint=chown", image, "-R", f"{user or 0}",
                    "/v")
            volumes.append(volume)
            command += ["-v", f"{volume}:{mount['mountPath']}"]
        for source in container.get("envFrom", []):
            for key, value in self.secrets[source["secretRef"]["name"]].items():
                command += ["-e", f"{key}={value}"]
        for variable in container.get("env", []):
            value = self._env_value(variable, name)
            if value is not None:
                command += ["-e", f"{variable['name']}={value}"]
        [port] = [p["containerPort"] for p in container["ports"]]
        host_port = free_port()  # fixed: the container's restarts keep it, as a Service keeps its address
        command += ["-p", f"127.0.0.1:{host_port}:{port}", f"--entrypoint={container['command'][0]}", image,
                    *container["command"][1:], *container.get("args", [])]
        _docker(*command)
        deployment = Deployment(name, port, host_port, volumes=volumes)
        self._deployments.append(deployment)
        return deployment

    def _add_hosts(self) -> List[str]:
        return [f"--add-host={name}:{address}" for name, address in self._hosts.items()]

    # --- the scheduler's part -----------------------------------------------------------------------

    def _unschedulable(self, pod: Pod) -> Optional[str]:
        """The scheduler's message when no node can hold the pod's requests, else None."""
        requests = {k: parse_quantity(v) for k, v in pod.container.get("resources", {}).get("requests", {}).items()}
        limits = pod.container.get("resources", {}).get("limits", {})
        for key, value in limits.items():  # a limit without a request requests the limit
            requests.setdefault(key, parse_quantity(value))
        short: Dict[str, int] = {}
        for node in self.nodes:
            free = {k: parse_quantity(v) for k, v in node.allocatable.items()}
            for other in self._running_pods():
                for k, v in other.container.get("resources", {}).get("requests", {}).items():
                    free[k] = free.get(k, Decimal(0)) - parse_quantity(v)
            missing = [k for k, v in requests.items() if v > free.get(k, Decimal(0))]
            if not missing:
                pod.node = node.name
                return None
            for k in missing:
                short[k] = short.get(k, 0) + 1
        reasons = ", ".join(f"{count} Insufficient {k}" for k, count in sorted(short.items()))
        return f"0/{len(self.nodes)} nodes are available: {reasons}. preemption: 0/{len(self.nodes)} nodes are " \
               f"available: {len(self.nodes)} No preemption victims found for incoming pod."

    def _running_pods(self) -> List[Pod]:
        return [p for j in list(self.jobs.values()) for p in j.pods if p.phase == "Running"]

    # --- the kubelet's part -------------------------------------------------------------------------

    def _env_value(self, variable: dict, pod_name: str) -> Optional[str]:
        if "value" in variable:
            return variable["value"]
        field_path = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if field_path == "spec.nodeName":
            return self.nodes[0].name
        if field_path == "metadata.name":
            return pod_name
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            raise NotImplementedError(f"env {variable['name']}: only values, secretKeyRef and the fieldRefs "
                                      f"spec.nodeName and metadata.name are stood in for")
        value = self.secrets.get(ref["name"], {}).get(ref["key"])
        if value is None and not ref.get("optional", False):
            raise LookupError(f"secret {ref['name']!r} has no key {ref['key']!r}")
        return value

    def _docker_run(self, pod: Pod, image: str) -> List[str]:
        container = pod.container
        command = ["run", "--detach", f"--name={pod.docker_name}", f"--hostname={pod.name}",
                   f"--network={self.network}", *self._add_hosts()]
        volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if mount["mountPath"] == "/dev/shm" and volume.get("emptyDir", {}).get("medium") == "Memory":
                command.append(f"--shm-size={int(parse_quantity(volume['emptyDir'].get('sizeLimit', '64Mi')))}b")
            else:
                raise NotImplementedError(f"volume {mount['name']}: only an emptyDir in memory at /dev/shm")
        user = pod.spec.get("securityContext", {}).get("runAsUser")
        if user is not None:
            command.append(f"--user={user}")
        limits = container.get("resources", {}).get("limits", {})
        if "memory" in limits:  # over it, the kernel kills the container (OOMKilled), as the kubelet's cgroup does
            memory = int(parse_quantity(limits["memory"]))
            command += [f"--memory={memory}b", f"--memory-swap={memory}b"]
        if "cpu" in limits:
            command.append(f"--cpus={min(float(parse_quantity(limits['cpu'])), os.cpu_count())}")
        for variable in container.get("env", []):
            value = self._env_value(variable, pod.name)
            if value is not None:
                command += ["-e", f"{variable['name']}={value}"]
        # What the kubelet injects into every pod (no API server is reachable from the pods here).
        command += ["-e", "KUBERNETES_SERVICE_HOST=kubernetes.default.svc", "-e", "KUBERNETES_SERVICE_PORT=443"]
        command += [f"--entrypoint={container['command'][0]}", image, *container["command"][1:],
                    *container.get("args", [])]
        return command

    @staticmethod
    def _by_digest(image: str) -> str:
        """`registry/repo:tag@sha256:...` -> `registry/repo@sha256:...`: what is pulled is what was pushed."""
        if "@sha256:" not in image:
            raise ValueError(f"image {image!r} is not pinned by digest")
        repository, digest = image.split("@", 1)
        if ":" in repository.rsplit("/", 1)[-1]:
            repository = repository.rsplit(":", 1)[0]
        return f"{repository}@{digest}"

    def _run_pod(self, job: SubmittedJob, pod: Pod) -> None:
        """Pending until scheduled (or deleted), then pulled, started and watched to its end."""
        while (message := self._unschedulable(pod)) is not None:
            if not pod.has_condition("PodScheduled", "False"):
                pod.conditions.append(_condition("PodScheduled", "Unschedulable", message, status="False"))
            pod.container_state = {"waiting": {"reason": "Pending"}}
            if job.deleted.wait(1.0) or self._past_deadline(job):
                pod.phase = "Failed"
                return
        pod.conditions = [_condition("PodScheduled")]
        image = self._by_digest(pod.container["image"])
        pulled = _docker("pull", image, check=False)
        if pulled.returncode != 0:
            pod.container_state = {"waiting": {"reason": "ErrImagePull", "message": pulled.stderr.strip()}}
            while not (job.deleted.wait(1.0) or self._past_deadline(job)):
                pod.container_state = {"waiting": {"reason": "ImagePullBackOff", "message": pulled.stderr.strip()}}
            pod.phase = "Failed"
            return
        pod.image_id = image
        try:
            command = self._docker_run(pod, image)
        except LookupError as missing:  # the container never starts; the Job stays active, as in a cluster
            pod.container_state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(missing)}}
            while not (job.deleted.wait(1.0) or self._past_deadline(job)):
                pass
            pod.phase = "Failed"
            return
        _docker(*command)
        pod.started = time.monotonic()
        pod.phase = "Running"
        pod.container_state = {"running": {"startedAt": _now()}}
        pod.conditions.append(_condition("Ready"))
        exit_code = int(_docker("wait", pod.docker_name).stdout.strip() or -1)
        pod.ended = time.monotonic()
        state = json.loads(_docker("inspect", pod.docker_name).stdout)[0]["State"]
        logs = _docker("logs", pod.docker_name, check=False)
        pod.logs = logs.stdout + logs.stderr
        _docker("rm", "--force", pod.docker_name, check=False)
        reason = "Completed" if exit_code == 0 else "OOMKilled" if state.get("OOMKilled") else "Error"
        if pod.lost:  # no kubelet reports this one: the taint manager evicts it, PodGC marks it failed
            time.sleep(self.node_loss_eviction_s)
            pod.conditions.append(_condition("DisruptionTarget", "DeletionByTaintManager",
                                             "Taint manager: deleting due to NoExecute taint"))
            reason = "ContainerStatusUnknown"
        pod.exit_code = exit_code
        pod.container_state = {"terminated": {"exitCode": exit_code, "reason": reason, "finishedAt": _now()}}
        pod.conditions = [c for c in pod.conditions if c["type"] != "Ready"]
        pod.phase = "Succeeded" if exit_code == 0 else "Failed"

    def _run_pod_or_say_why(self, job: SubmittedJob, pod: Pod, errors: List[BaseException]) -> None:
        try:
            self._run_pod(job, pod)
        except BaseException as error:  # noqa: BLE001 - handed to the Job controller, which fails the Job with it
            errors.append(error)

    def _terminate(self, pod: Pod, grace_s: Optional[float] = None) -> None:
        """SIGTERM to the container's PID 1, SIGKILL after the grace period (in the background, as the kubelet)."""
        if grace_s is None:
            grace_s = pod.spec.get("terminationGracePeriodSeconds", 30)
        threading.Thread(target=_docker, args=("stop", f"--time={int(grace_s)}", pod.docker_name),
                         kwargs={"check": False}, daemon=True).start()

    # --- test hooks: what a cluster does to a pod ---------------------------------------------------

    def evict(self, pod: Pod, grace_s: Optional[float] = None) -> None:
        """What the `pods/eviction` subresource does (a drain, a preemption): DisruptionTarget, then termination."""
        pod.conditions.append(_condition("DisruptionTarget", "EvictionByEvictionAPI", "Eviction API: evicting"))
        self._terminate(pod, grace_s)

    def lose_node(self, pod: Pod) -> None:
        """The pod's node disappears: its container is gone at once, with no signal it could act on."""
        pod.lost = True
        _docker("kill", "--signal=KILL", pod.docker_name)

    def run_out_of_memory(self, pod: Pod, timeout_s: float = 300) -> None:
        """The training outgrows its memory limit: a process in the container's cgroup allocates until the kernel's
        OOM killer acts, and PID 1 (the training, made its first choice) is what it kills: exit 137, OOMKilled.
        (Lowering the limit under the usage, as a kubelet cannot either, is refused by cgroup v1.)
        PID 1 is stopped meanwhile: filling gigabytes of a fresh VM's memory can take longer than the rest of a
        short training, which would then end Completed, never having outgrown anything."""
        _docker("exec", "--user=0", pod.docker_name, "sh", "-c", "echo 1000 > /proc/1/oom_score_adj")
        _docker("kill", "--signal=STOP", pod.docker_name)
        _docker("exec", "--detach", pod.docker_name, "python3", "-c",
                "chunks = []\nwhile True: chunks.append(bytearray(16 << 20))")
        try:
            _wait(lambda: pod.ended > 0, timeout_s, f"pod {pod.name} OOM-killed")
        except RuntimeError:
            _docker("kill", "--signal=CONT", pod.docker_name, check=False)
            raise

    def wait_for_pod(self, job_name: str, attempt: int = 1, phase: str = "Running", timeout_s: float = 600) -> Pod:
        """The Job's `attempt`-th pod, once it is in `phase`."""
        def there() -> bool:
            job = self.jobs.get(job_name)
            return bool(job and len(job.pods) >= attempt and job.pods[attempt - 1].phase == phase)
        _wait(there, timeout_s, f"Job {job_name}'s pod {attempt} {phase}")
        return self.jobs[job_name].pods[attempt - 1]

    def only_job(self, timeout_s: float = 900) -> SubmittedJob:
        _wait(lambda: len(self.jobs) == 1, timeout_s, "one Job submitted")
        return next(iter(self.jobs.values()))

    def max_concurrent(self) -> int:
        """The most pods that were running at the same time."""
        pods = [p for j in self.jobs.values() for p in j.pods if p.started]
        events = sorted([(p.started, 1) for p in pods] + [(p.ended, -1) for p in pods if p.ended])
        running = peak = 0
        for _, change in events:
            running += change
            peak = max(peak, running)
        return peak

    # --- the Job controller's part ------------------------------------------------------------------

    def _past_deadline(self, job: SubmittedJob) -> bool:
        deadline = job.manifest["spec"].get("activeDeadlineSeconds")
        return deadline is not None and time.monotonic() - job.status["_started"] > deadline

    def _new_pod(self, job: SubmittedJob) -> Pod:
        template = job.manifest["spec"]["template"]
        suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        labels = {**template.get("metadata", {}).get("labels", {}), "job-name": job.name,
                  "batch.kubernetes.io/job-name": job.name, "controller-uid": job.manifest["metadata"]["uid"]}
        pod = Pod(f"{job.name}-{suffix}", job.manifest["metadata"]["namespace"], labels, template["spec"])
        job.pods.append(pod)
        return pod

    def _policy(self, job: SubmittedJob, pod: Pod) -> Tuple[str, str]:
        """(action, message) of the first podFailurePolicy rule the failed pod matches; Count if none does."""
        for index, rule in enumerate(job.manifest["spec"].get("podFailurePolicy", {}).get("rules", [])):
            codes = rule.get("onExitCodes")
            if codes and pod.exit_code not in (None, 0):
                inside = pod.exit_code in codes["values"]
                if inside == (codes["operator"] == "In"):
                    return rule["action"], (f"Container {pod.container['name']} for pod {pod.namespace}/{pod.name} "
                                            f"failed with exit code {pod.exit_code} matching {rule['action']} rule "
                                            f"at index {index}")
            for wanted in rule.get("onPodConditions", []):
                if pod.has_condition(wanted["type"], wanted.get("status", "True")):
                    return rule["action"], (f"Pod {pod.namespace}/{pod.name} has condition {wanted['type']} "
                                            f"matching {rule['action']} rule at index {index}")
        return "Count", ""

    def _fail(self, job: SubmittedJob, reason: str, message: str) -> None:
        job.status.setdefault("conditions", []).append(_condition("FailureTarget", reason, message))
        for pod in job.pods:
            if pod.phase == "Running":
                self._terminate(pod)
        _wait(lambda: all(p.phase != "Running" for p in job.pods), 600, f"Job {job.name}'s pods terminated")
        job.status["conditions"].append(_condition("Failed", reason, message))

    def _control(self, job: SubmittedJob) -> None:
        spec = job.manifest["spec"]
        backoff_limit = spec.get("backoffLimit", 6)
        counted = 0
        try:
            while True:
                pod = self._new_pod(job)
                job.status["active"] = 1
                errors: List[BaseException] = []
                runner = threading.Thread(target=self._run_pod_or_say_why, args=(job, pod, errors), daemon=True)
                runner.start()
                while runner.is_alive():
                    runner.join(0.5)
                    if self._past_deadline(job) and not job.condition("FailureTarget"):
                        self._fail(job, "DeadlineExceeded", "Job was active longer than specified deadline")
                if errors:
                    raise errors[0]
                if job.condition("Failed") or job.deleted.is_set():
                    return
                job.status["active"] = 0
                if pod.phase == "Succeeded":
                    job.status.update(succeeded=1, completionTime=_now())
                    job.status.setdefault("conditions", []).append(_condition("Complete"))
                    return
                job.status["failed"] = job.status.get("failed", 0) + 1
                action, message = self._policy(job, pod)
                if action == "FailJob":
                    return self._fail(job, "PodFailurePolicy", message)
                if action != "Ignore":
                    counted += 1
                    if counted > backoff_limit:
                        return self._fail(job, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
                if job.deleted.wait(min(self.backoff_s * 2 ** max(counted - 1, 0), 360) if action != "Ignore" else 0):
                    return
        except Exception:  # noqa: BLE001 - the stand-in's own failure: the Job fails, saying so
            message = traceback.format_exc()
            for pod in job.pods:
                _docker("rm", "--force", pod.docker_name, check=False)
                pod.phase = "Failed" if pod.phase in ("Pending", "Running") else pod.phase
            job.status.setdefault("conditions", []).append(_condition("Failed", "StandInError", message))
        finally:
            job.status["active"] = 0
            job.done.set()

    # --- the API ------------------------------------------------------------------------------------

    def _create_job(self, namespace: str, manifest: dict) -> dict:
        metadata = manifest["metadata"]
        metadata.setdefault("namespace", namespace)
        if metadata["namespace"] != namespace:
            raise ValueError(f"the namespace of the provided object ({metadata['namespace']}) does not match the "
                             f"namespace sent on the request ({namespace})")
        if metadata["name"] in self.jobs:
            raise FileExistsError(f'jobs.batch "{metadata["name"]}" already exists')
        metadata["uid"] = f"standin-{len(self.jobs)}"
        metadata["creationTimestamp"] = _now()
        job = SubmittedJob(manifest=manifest)
        # The Job controller sets startTime when it first syncs the Job, before any pod is scheduled.
        job.status = {"startTime": _now(), "_started": time.monotonic(), "active": 0}
        self.jobs[metadata["name"]] = job
        threading.Thread(target=self._control, args=(job,), daemon=True).start()
        return {**manifest, "status": {}}

    @staticmethod
    def job_status(job: SubmittedJob) -> dict:
        return {k: v for k, v in job.status.items() if not k.startswith("_")}

    def _delete_job(self, job: SubmittedJob, options: dict) -> None:
        """batch/v1's default propagation through the API is orphan: the pods keep running, as in a cluster."""
        del self.jobs[job.name]
        job.deleted.set()
        if options.get("propagationPolicy") in ("Background", "Foreground"):
            for pod in job.pods:
                if pod.phase == "Running":
                    self._terminate(pod, options.get("gracePeriodSeconds"))
        self.deleted_jobs.append(job)

    def _pods(self, namespace: str, selector: str) -> List[Pod]:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if part)
        return [p for j in list(self.jobs.values()) for p in j.pods
                if p.namespace == namespace and all(p.labels.get(k) == v for k, v in wanted.items())]

    def _find_pod(self, namespace: str, name: str) -> Optional[Pod]:
        return next((p for j in list(self.jobs.values()) for p in j.pods
                     if p.namespace == namespace and p.name == name), None)

    def _handler(self):
        standin = self
        routes = [
            ("POST", re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$"), "create_job"),
            ("GET", re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)(/status)?$"), "job"),
            ("DELETE", re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)$"), "delete_job"),
            ("GET", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$"), "pods"),
            ("POST", re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/eviction$"), "evict"),
            ("GET", re.compile(r"^/api/v1/nodes$"), "nodes"),
        ]

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._reply(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                                   "code": code, "message": message})

            def _body(self) -> dict:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length)) if length else {}

            def _route(self, method: str) -> None:
                url = urlparse(self.path)
                for verb, pattern, action in routes:
                    match = pattern.match(url.path)
                    if verb == method and match:
                        try:
                            return getattr(self, f"_{action}")(match, parse_qs(url.query))
                        except Exception as error:  # noqa: BLE001 - an API error, never a hang
                            return self._status(500, "InternalError", f"stand-in: {error!r}")
                self._status(404, "NotFound", f"{method} {url.path}: not stood in for")

            do_GET = lambda self: self._route("GET")  # noqa: E731
            do_POST = lambda self: self._route("POST")  # noqa: E731
            do_DELETE = lambda self: self._route("DELETE")  # noqa: E731

            def _create_job(self, match, query) -> None:
                try:
                    self._reply(201, standin._create_job(match["ns"], self._body()))
                except FileExistsError as error:
                    self._status(409, "AlreadyExists", str(error))
                except ValueError as error:
                    self._status(400, "BadRequest", str(error))

            def _existing(self, match) -> Optional[SubmittedJob]:
                job = standin.jobs.get(match["name"])
                if job is None or job.manifest["metadata"]["namespace"] != match["ns"]:
                    self._status(404, "NotFound", f'jobs.batch "{match["name"]}" not found')
                    return None
                return job

            def _job(self, match, query) -> None:
                if job := self._existing(match):
                    self._reply(200, {**job.manifest, "status": standin.job_status(job)})

            def _delete_job(self, match, query) -> None:
                if job := self._existing(match):
                    standin._delete_job(job, {**self._body(), **{k: v[0] for k, v in query.items()}})
                    self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

            def _pods(self, match, query) -> None:
                pods = standin._pods(match["ns"], query.get("labelSelector", [""])[0])
                self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                  "items": [p.manifest() for p in pods]})

            def _evict(self, match, query) -> None:
                pod = standin._find_pod(match["ns"], match["name"])
                if pod is None:
                    return self._status(404, "NotFound", f'pods "{match["name"]}" not found')
                grace = self._body().get("deleteOptions", {}).get("gracePeriodSeconds")
                standin.evict(pod, grace)
                self._reply(201, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201})

            def _nodes(self, match, query) -> None:
                self._reply(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                                  "items": [n.manifest() for n in standin.nodes]})

        return Handler
