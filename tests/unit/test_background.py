"""InBackground (train/tracking/background.py): the record's start written beside training, retried through
outages, and the end of training told whether it all landed."""

from __future__ import annotations

import threading

import pytest

from train.tracking import background
from train.tracking.background import InBackground


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(background, "_RETRY_WAIT_S", (0.001, 0.002))


def test_steps_run_in_order_off_the_calling_thread_and_wait_says_done():
    ran = []
    caller = threading.current_thread()
    steps = [lambda i=i: ran.append((i, threading.current_thread() is caller)) for i in range(3)]
    assert InBackground("test", steps).wait(5) is None
    assert ran == [(0, False), (1, False), (2, False)]


def test_a_failing_step_is_retried_until_it_lands_and_the_next_waits_for_it():
    calls = []

    def flaky():
        calls.append("flaky")
        if len(calls) < 3:
            raise ConnectionError("Connection refused")

    assert InBackground("test", [flaky, lambda: calls.append("next")]).wait(5) is None
    assert calls == ["flaky", "flaky", "flaky", "next"]


def test_a_step_that_never_lands_is_given_up_at_the_wait_with_its_error_and_tried_no_more():
    calls = []

    def down():
        calls.append(1)
        raise ConnectionError("Connection refused")

    job = InBackground("test", [down, lambda: calls.append("never")])
    threading.Event().wait(0.05)
    assert job.wait(0.05) == "ConnectionError: Connection refused"
    tried = len(calls)
    threading.Event().wait(0.05)
    assert len(calls) == tried and "never" not in calls and not job.done
