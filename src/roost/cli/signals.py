"""SIGTERM and SIGINT as a clean stop, for every long-running command.

A service manager may stop a command while it is still starting (importing
libtorrent, opening its session, binding its sockets). :class:`StopOnSignals`
is created first thing in the command and catches those signals at once; the
command then hands it the stop call of what it runs (:meth:`forward`). A
signal that came in between is kept and delivered on the spot, so the command
still ends through its own clean path, with exit status 0, instead of dying
of the signal.

A command that does its work on the main thread (``roost peer``: the
download's wait, then the install) takes the signals as an exception
instead (:func:`interrupt_on_signals`): SIGTERM as Ctrl-C is, so that the
``finally`` blocks remove what was half made (a staging directory) and stop
the worker.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


class StopOnSignals:
    """SIGTERM/SIGINT → the forwarded stop call, kept until there is one."""

    def __init__(self) -> None:
        self._stop: Callable[[], None] | None = None
        self._pending = False
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            # An ignored SIGINT stays ignored: a command started in the
            # background (``&`` without job control, nohup) is not stopped
            # by a Ctrl-C meant for the shell's foreground.
            if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
                signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, _signum: int, _frame: object) -> None:
        # Runs on the main thread between bytecodes: no lock (it could be
        # held by the very code it interrupted).
        stop = self._stop
        if stop is None:
            self._pending = True
        else:
            stop()

    def forward(self, stop: Callable[[], None]) -> None:
        """From now on a signal calls ``stop``; one that already came calls it now."""
        self._stop = stop
        if self._pending:
            stop()

    @property
    def requested(self) -> bool:
        """Whether a signal came before anything was forwarded."""
        return self._pending


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised on the main thread as SIGINT's ``KeyboardInterrupt`` is."""


def interrupt_on_signals() -> None:
    """SIGTERM raises :class:`Terminated`, SIGINT ``KeyboardInterrupt`` (an
    ignored SIGINT stays ignored); once, then both are ignored: the clean-up
    the exception runs is not cut short by the next signal (a deploy that
    was interrupted stops its peers with SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def raise_once(signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    signal.signal(signal.SIGTERM, raise_once)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, raise_once)
