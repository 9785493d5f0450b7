"""SIGTERM (a Kubernetes eviction, a `kill`) and SIGINT (Ctrl-C) stop training promptly, as KeyboardInterrupt.

The one place an interrupt waits is while YOLOv5 writes the epoch's checkpoint: from the end of
the epoch (before its metrics are recorded) until last.pt is on disk. Stopping inside it would leave
a torn last.pt, or metrics for an epoch the checkpoint does not hold, and a resumed run would
repeat that epoch. Everywhere else the interrupt is raised at once.
"""

from __future__ import annotations

import signal
from typing import Optional


class CheckpointSafeInterrupts:
    def __init__(self) -> None:
        self._saving = False
        self._deferred: Optional[int] = None

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def register(self, callbacks) -> None:  # yolov5.utils.callbacks.Callbacks, before YOLOv5 adds its loggers
        # Registered first, so it runs before YOLOv5's own on_fit_epoch_end writes the results.csv row.
        callbacks.register_action("on_fit_epoch_end", name="checkpoint-begin", callback=self._begin)
        callbacks.register_action("on_model_save", name="checkpoint-end", callback=self._end)
        callbacks.register_action("on_train_end", name="checkpoint-end", callback=self._end)

    def training_ended(self) -> None:
        """Training is over (a crash may have left the checkpoint section open): interrupts act at once again."""
        self._saving = False
        self._deferred = None

    def _on_signal(self, signum: int, frame) -> None:
        if self._saving:
            self._deferred = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _begin(self, *args, **kwargs) -> None:
        self._saving = True

    def _end(self, *args, **kwargs) -> None:
        self._saving = False
        if self._deferred is not None:
            signum, self._deferred = self._deferred, None
            raise KeyboardInterrupt(signal.Signals(signum).name)
