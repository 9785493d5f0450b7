"""Record writes that need not hold up training: steps run in turn on a thread of their own while it starts.

Each step is retried through outages (it must be safe to repeat: params, tags and inputs are), so a server that
blinks during the start costs nothing; a refusal of the request itself (a value MLflow does not take) is not
retried: it would be refused again, and the steps after it are not taken. `wait` at the end of training says
whether everything landed.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

from train.tracking.run import one_line

_RETRY_WAIT_S = (1, 2, 5, 10)  # then every 10 s, as the metric spool (train/tracking/spool.py)
_REFUSALS = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS")


class InBackground:
    def __init__(self, name: str, steps: Sequence[Callable[[], None]]) -> None:
        self._steps = list(steps)
        self._given_up = threading.Event()
        self.last_error = ""  # one line, without credentials
        self.done = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wait(self, timeout_s: float) -> Optional[str]:
        """None once every step is done (waiting up to `timeout_s`); else why not, and no more tries."""
        self._thread.join(max(timeout_s, 0))
        if self.done:
            return None
        self._given_up.set()
        return self.last_error or "still sending"

    def _run(self) -> None:
        for step in self._steps:
            attempt = 0
            while not self._given_up.is_set():
                try:
                    step()
                    break
                except Exception as error:  # noqa: BLE001 - an outage of any kind, or a refusal
                    self.last_error = f"{type(error).__name__}: {one_line(error)}"
                    if _refused(error) or self._given_up.wait(_RETRY_WAIT_S[min(attempt, len(_RETRY_WAIT_S) - 1)]):
                        return
                    attempt += 1
            else:
                return
        self.done = True


def _refused(error: Exception) -> bool:
    """MLflow (the server, or its client checking first) refused the request itself, as it would again: a value
    it does not take, or one already there. Other 4xx answers may come from a proxy while the server restarts."""
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in _REFUSALS
