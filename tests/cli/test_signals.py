"""A stop signal that comes while a long-running command is still starting
is kept and delivered once there is something to stop (roost.cli.signals)."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

from roost.cli.signals import StopOnSignals


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("restore_handlers")
def test_a_signal_before_forward_is_kept_and_delivered() -> None:
    signals = StopOnSignals()
    os.kill(os.getpid(), signal.SIGTERM)  # the engine is still starting
    assert signals.requested
    stopped = threading.Event()
    signals.forward(stopped.set)
    assert stopped.is_set()


@pytest.mark.usefixtures("restore_handlers")
def test_a_signal_after_forward_calls_the_stop_at_once() -> None:
    signals = StopOnSignals()
    calls: list[str] = []
    signals.forward(lambda: calls.append("stop"))
    assert calls == [] and not signals.requested
    os.kill(os.getpid(), signal.SIGINT)
    assert calls == ["stop"]


@pytest.mark.usefixtures("restore_handlers")
def test_an_ignored_sigint_stays_ignored() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # started in the background
    StopOnSignals()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
