"""CheckpointSafeInterrupts (train/interrupts.py) with real signals sent to this process, and YOLOv5's own Callbacks.

The checkpoint section opens with on_fit_epoch_end and closes with on_model_save or on_train_end, as YOLOv5 runs
them; a signal outside it raises KeyboardInterrupt at once, inside it when it closes.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager

import pytest

from train.interrupts import CheckpointSafeInterrupts

SIGNALS = [signal.SIGTERM, signal.SIGINT]


@pytest.fixture(scope="module")
def Callbacks(tmp_path_factory):
    saved = dict(os.environ)  # the offline switches precede `import yolov5`; the environment is restored after
    from train import offline

    offline.apply(tmp_path_factory.mktemp("cache"))
    from yolov5.utils.callbacks import Callbacks

    yield Callbacks
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def interrupts():
    """Installed for the test; the process's own handlers are back after it."""
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    handler = CheckpointSafeInterrupts()
    handler.install()
    for signum in SIGNALS:  # else the SIGTERM below would end pytest itself
        assert signal.getsignal(signum) == handler._on_signal, signal.Signals(signum).name
    yield handler
    for signum, previous in saved.items():
        signal.signal(signum, previous)


@pytest.fixture
def callbacks(Callbacks, interrupts):
    callbacks = Callbacks()
    interrupts.register(callbacks)
    return callbacks


def send(signum: int) -> None:
    """The signal to this process; Python runs its handler in the main thread before the next bytecode or two."""
    os.kill(os.getpid(), signum)
    time.sleep(0.001)


@contextmanager
def no_interrupt(where: str):
    """A KeyboardInterrupt escaping a test would stop the whole pytest session: make it this test's failure."""
    try:
        yield
    except KeyboardInterrupt as interrupt:
        pytest.fail(f"KeyboardInterrupt({interrupt}) {where}")


def epoch_end(callbacks) -> None:
    callbacks.run("on_fit_epoch_end", [0.0] * 13, 0, 0.0, 0.0)  # YOLOv5's arguments: vals, epoch, best_fitness, fi


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_outside_the_checkpoint_a_signal_interrupts_at_once(signum, callbacks):
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        send(signum)
        time.sleep(2)  # never reached while it works
    # the same after a whole checkpoint section
    epoch_end(callbacks)
    callbacks.run("on_model_save", None, 0, 0.0, 0.0, None)
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        send(signum)
        time.sleep(2)


@pytest.mark.parametrize("closing_hook", ["on_model_save", "on_train_end"])
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_inside_the_checkpoint_a_signal_waits_for_its_end(signum, closing_hook, callbacks):
    with no_interrupt("inside the checkpoint section"):
        epoch_end(callbacks)  # the epoch's metrics and last.pt are being written
        send(signum)
        time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt, match=signal.Signals(signum).name):
        callbacks.run(closing_hook)
    with no_interrupt("at the end of the next checkpoint section: raised twice"):
        epoch_end(callbacks)
        callbacks.run("on_model_save")


def test_the_last_of_several_signals_in_the_checkpoint_is_raised(callbacks):
    with no_interrupt("inside the checkpoint section"):
        epoch_end(callbacks)
        send(signal.SIGINT)
        send(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        callbacks.run("on_model_save")


def test_training_ended_drops_a_deferred_signal_and_makes_signals_act_at_once(callbacks, interrupts):
    with no_interrupt("after training_ended()"):
        epoch_end(callbacks)  # a crash inside the checkpoint section leaves it open...
        send(signal.SIGTERM)
        interrupts.training_ended()  # ...until training is over
        callbacks.run("on_train_end")  # nothing deferred is raised any more
    with pytest.raises(KeyboardInterrupt, match="SIGINT"):
        send(signal.SIGINT)
        time.sleep(2)


def test_the_checkpoint_opens_before_the_loggers_that_yolov5_registers_after_it(callbacks):
    callbacks.register_action("on_fit_epoch_end", name="yolov5-csv-logger", callback=lambda *args: None)
    names = [action["name"] for action in callbacks.get_registered_actions("on_fit_epoch_end")]
    assert names == ["checkpoint-begin", "yolov5-csv-logger"]
    assert [a["name"] for a in callbacks.get_registered_actions("on_model_save")] == ["checkpoint-end"]
    assert [a["name"] for a in callbacks.get_registered_actions("on_train_end")] == ["checkpoint-end"]


def test_an_interrupt_a_yolov5_step_swallowed_is_raised_at_the_next_event(callbacks, interrupts):
    """AutoAnchor and the label plots run inside YOLOv5's TryExcept, which swallows KeyboardInterrupt too."""
    from yolov5.utils import TryExcept

    with no_interrupt("inside TryExcept (it swallows it, as YOLOv5's check_anchors does)"):
        with TryExcept("AutoAnchor: ERROR"):
            send(signal.SIGTERM)
            time.sleep(2)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        callbacks.run("on_train_start")
    with no_interrupt("once raised again"):
        callbacks.run("on_train_epoch_start")
