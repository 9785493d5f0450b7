"""A STAND-IN for the Kubernetes API server, for tests only: no API server can run on these machines.

It speaks just the batch/v1 Job endpoints MLflow's Kubernetes backend calls (create_namespaced_job,
read_namespaced_job_status, delete_namespaced_job), records each submitted Job, and plays the
kubelet's part with the real Docker engine: the Job's first container runs from its image (by
digest, pulled from the registry it was pushed to), with its command and the env as submitted.
The Job's status follows that container: active while it runs, then Complete or Failed.

Secrets are only what a test registers in `secrets` (name -> key -> value): an env entry's
`secretKeyRef` is looked up there, a missing optional one leaves the variable unset, a missing
required one fails the Job without running it (a cluster's CreateContainerConfigError).

What it does not do, and a cluster would: scheduling, resource requests (no GPU here), other
`valueFrom` sources and `envFrom` (skipped), retries under backoffLimit, volumes other than
/dev/shm (mapped to --shm-size).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

_JOBS = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs(?:/(?P<name>[^/?]+))?(?P<status>/status)?")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# What the downward API's spec.nodeName gives every pod here.
NODE_NAME = "kube-standin-node"


@dataclass
class SubmittedJob:
    manifest: dict
    status: dict = field(default_factory=dict)
    logs: str = ""
    exit_code: Optional[int] = None
    started: float = 0.0
    ended: float = 0.0
    done: threading.Event = field(default_factory=threading.Event)


class KubeStandIn:
    def __init__(self, docker_network: str = "host") -> None:
        self.jobs: Dict[str, SubmittedJob] = {}
        self.secrets: Dict[str, Dict[str, str]] = {}  # the namespace's Secrets: name -> key -> value
        self.docker_network = docker_network
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "KubeStandIn":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        for job in self.jobs.values():
            job.done.wait(timeout=120)

    def kubeconfig(self, path: Path, context: str) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "standin", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": context, "context": {"cluster": "standin", "user": "standin"}}],
        }))
        return path

    # --- the kubelet's part -------------------------------------------------------------------------

    def _docker_command(self, manifest: dict) -> List[str]:
        pod = manifest["spec"]["template"]["spec"]
        container = pod["containers"][0]
        command = ["docker", "run", "--rm", f"--network={self.docker_network}",
                   f"--name={manifest['metadata']['name']}"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            if mount["mountPath"] == "/dev/shm" and volume.get("emptyDir", {}).get("medium") == "Memory":
                command.append(f"--shm-size={volume['emptyDir'].get('sizeLimit', '1Gi').replace('Gi', 'g')}")
        user = pod.get("securityContext", {}).get("runAsUser")
        if user is not None:
            command.append(f"--user={user}")
        for variable in container.get("env", []):
            value = self._env_value(variable)
            if value is not None:
                command += ["-e", f"{variable['name']}={value}"]
        # What the kubelet would inject into every pod.
        command += ["-e", "KUBERNETES_SERVICE_HOST=127.0.0.1", "-e", "KUBERNETES_SERVICE_PORT=443"]
        command += [f"--entrypoint={container['command'][0]}", container["image"], *container["command"][1:],
                    *container.get("args", [])]
        return command

    def _env_value(self, variable: dict) -> Optional[str]:
        if "value" in variable:
            return variable["value"]
        if variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            return NODE_NAME
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is None:
            return None  # other fieldRefs, configMapKeyRef, ...: not stood in for
        value = self.secrets.get(ref["name"], {}).get(ref["key"])
        if value is None and not ref.get("optional", False):
            raise LookupError(f"secret {ref['name']!r} has no key {ref['key']!r}")
        return value

    def max_concurrent(self) -> int:
        """The most Jobs that were running at the same time."""
        events = sorted([(j.started, 1) for j in self.jobs.values()] + [(j.ended, -1) for j in self.jobs.values()])
        running = peak = 0
        for _, change in events:
            running += change
            peak = max(peak, running)
        return peak

    def _run(self, job: SubmittedJob) -> None:
        job.status = {"startTime": _now(), "active": 1}
        job.started = time.monotonic()
        try:
            proc = subprocess.run(self._docker_command(job.manifest), capture_output=True, text=True)
            job.logs, job.exit_code = proc.stdout + proc.stderr, proc.returncode
            message = f"container exited with {proc.returncode}"
        except LookupError as missing:  # the container never starts
            job.logs, job.exit_code, message = str(missing), None, f"CreateContainerConfigError: {missing}"
        job.ended = time.monotonic()
        ok = job.exit_code == 0
        job.status = {
            "startTime": job.status["startTime"], "completionTime": _now(),
            "succeeded" if ok else "failed": 1,
            "conditions": [{"type": "Complete" if ok else "Failed", "status": "True", "lastTransitionTime": _now(),
                            "message": message}],
        }
        job.done.set()

    # --- the API ------------------------------------------------------------------------------------

    def _handler(self):
        standin = self

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

            def _job(self) -> Optional[SubmittedJob]:
                match = _JOBS.match(self.path)
                return standin.jobs.get(match["name"]) if match and match["name"] else None

            def _not_found(self) -> None:
                self._reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                  "code": 404, "message": f"{self.path} not found"})

            def do_POST(self) -> None:
                match = _JOBS.match(self.path)
                if not match or match["name"]:
                    return self._not_found()
                manifest = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                manifest["metadata"].setdefault("namespace", match["ns"])
                manifest["metadata"]["uid"] = f"standin-{len(standin.jobs)}"
                manifest["metadata"]["creationTimestamp"] = _now()
                job = SubmittedJob(manifest=manifest)
                standin.jobs[manifest["metadata"]["name"]] = job
                threading.Thread(target=standin._run, args=(job,), daemon=True).start()
                self._reply(201, {**manifest, "status": {}})

            def do_GET(self) -> None:
                job = self._job()
                if job is None:
                    return self._not_found()
                self._reply(200, {**job.manifest, "status": job.status})

            def do_DELETE(self) -> None:
                job = self._job()
                if job is None:
                    return self._not_found()
                subprocess.run(["docker", "rm", "-f", job.manifest["metadata"]["name"]], capture_output=True)
                self._reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler
