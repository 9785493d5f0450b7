"""Each attempt at a run, in its tags: a retried Kubernetes pod (the same MLFLOW_RUN_ID) or `train.resume` continues
the run, and says which attempt it is, where it runs, and how the previous one ended as far as it can tell.

tags: `attempt` = n (1 for the first); `attempt.<n>.pod` (POD_NAME, else HOSTNAME) and `attempt.<n>.node`
(NODE_NAME, which the Job template sets) where known; `attempt.<n-1>.ended`, read from the run's status when this
attempt starts, before opening the run sets it RUNNING again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional

from mlflow import MlflowClient

# How the previous attempt ended, by the status it left the run in. {k}: the checkpoint epoch this attempt resumes
# from; {error}: the run's `error` tag.
ENDED = {
    "KILLED": "KILLED: stopped by a signal (eviction, preemption, deletion) with its checkpoint at epoch {k}",
    "RUNNING": "lost without a word (SIGKILL: node loss or out of memory); continued from the checkpoint uploaded "
               "at epoch {k}",
    "FAILED": "FAILED: {error}; continued from its checkpoint at epoch {k}",
}
ENDED_WITHOUT_CHECKPOINT = {
    "KILLED": "KILLED: stopped by a signal (eviction, preemption, deletion) before its first checkpoint; started again",
    "RUNNING": "lost without a word (SIGKILL: node loss or out of memory) before any checkpoint was uploaded; "
               "started again",
    "FAILED": "FAILED: {error}; no checkpoint, started again",
}


@dataclass
class Before:
    """The run as this attempt found it."""
    status: str
    attempt: Optional[int]  # its `attempt` tag, if any
    error: str

    @classmethod
    def read(cls, tracking_uri: str, run_id: str) -> "Before":
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
        tag = run.data.tags.get("attempt", "")
        return cls(run.info.status, int(tag) if tag.isdigit() else None, run.data.tags.get("error", "unknown error"))


def tags(before: Optional[Before], resumed: bool, checkpoint_epoch: Optional[int],
         env: Mapping[str, str]) -> Dict[str, str]:
    """This attempt's tags. `before`: the run as found, None for a new one; `resumed`: it continues from a
    checkpoint (at `checkpoint_epoch`), which means an earlier attempt trained even if it left no `attempt` tag."""
    previous = before.attempt if before and before.attempt is not None else (1 if resumed else 0)
    n = previous + 1
    result = {"attempt": str(n)}
    pod = env.get("POD_NAME") or env.get("HOSTNAME")
    if pod:
        result[f"attempt.{n}.pod"] = pod
    if env.get("NODE_NAME"):
        result[f"attempt.{n}.node"] = env["NODE_NAME"]
    if previous and before is not None:
        wording = ENDED if checkpoint_epoch is not None else ENDED_WITHOUT_CHECKPOINT
        template = wording.get(before.status, f"{before.status}" + (": continued from its checkpoint at epoch {k}"
                                                                    if checkpoint_epoch is not None else ""))
        result[f"attempt.{previous}.ended"] = template.format(k=checkpoint_epoch, error=before.error)
    return result
