"""Record writes that need not hold up training: steps run in turn on a thread of their own while it starts.

Each step is retried through outages (it must be safe to repeat: params, tags and inputs are), so a server that
blinks during the start costs nothing; `wait` at the end of training says whether everything landed.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

_RETRY_WAIT_S = (1, 2, 5, 10)  # then every 10 s, as the metric spool (train/tracking/spool.py)


class InBackground:
    def __init__(self, name: str, steps: Sequence[Callable[[], None]]) -> None:
        self._steps = list(steps)
        self._given_up = threading.Event()
        self.last_error = ""
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
            while True:
                try:
                    step()
                    break
                except Exception as error:  # noqa: BLE001 - an outage of any kind, or a refusal: retried
                    text = str(error).strip()
                    self.last_error = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
                    if self._given_up.wait(_RETRY_WAIT_S[min(attempt, len(_RETRY_WAIT_S) - 1)]):
                        return
                    attempt += 1
        self.done = True
