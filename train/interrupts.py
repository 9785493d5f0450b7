"""SIGTERM (a Kubernetes eviction, a `kill`) and SIGINT (Ctrl-C) stop training promptly, as KeyboardInterrupt.

The one place an interrupt waits is while YOLOv5 writes the epoch's checkpoint: from the end of
the epoch (before its metrics are recorded) until last.pt is on disk. Stopping inside it would leave
a torn last.pt, or metrics for an epoch the checkpoint does not hold, and a resumed run would
repeat that epoch. Everywhere else the interrupt is raised at once.

YOLOv5 runs some steps before the first epoch (AutoAnchor, plotting the labels) inside its TryExcept,
which swallows every exception, KeyboardInterrupt included: an interrupt raised there would be lost and
the run would train to the end. So an interrupt is raised again at the next training event.
"""

from __future__ import annotations

import signal
from typing import Optional


class CheckpointSafeInterrupts:
    # The events where an interrupt a step swallowed is raised again: the first ones after YOLOv5's TryExcept steps.
    AGAIN_AT = ("on_pretrain_routine_end", "on_train_start", "on_train_epoch_start", "on_train_batch_end")

    def __init__(self) -> None:
        self._saving = False
        self._deferred: Optional[int] = None
        self._raised: Optional[int] = None  # raised, and (if training goes on) swallowed on the way

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def register(self, callbacks) -> None:  # yolov5.utils.callbacks.Callbacks, before YOLOv5 adds its loggers
        # Registered first, so it runs before YOLOv5's own on_fit_epoch_end writes the results.csv row.
        callbacks.register_action("on_fit_epoch_end", name="checkpoint-begin", callback=self._begin)
        callbacks.register_action("on_model_save", name="checkpoint-end", callback=self._end)
        callbacks.register_action("on_train_end", name="checkpoint-end", callback=self._end)
        for event in self.AGAIN_AT:
            callbacks.register_action(event, name="interrupt-again", callback=self._again)

    def training_ended(self) -> None:
        """Training is over (a crash may have left the checkpoint section open): interrupts act at once again."""
        self._saving = False
        self._deferred = None
        self._raised = None

    def _on_signal(self, signum: int, frame) -> None:
        if self._saving:
            self._deferred = signum
            return
        self._raised = signum
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def _again(self, *args, **kwargs) -> None:
        if self._raised is not None:
            signum, self._raised = self._raised, None
            raise KeyboardInterrupt(signal.Signals(signum).name)

    def _begin(self, *args, **kwargs) -> None:
        self._saving = True

    def _end(self, *args, **kwargs) -> None:
        self._saving = False
        if self._deferred is not None:
            signum, self._deferred = self._deferred, None
            raise KeyboardInterrupt(signal.Signals(signum).name)
