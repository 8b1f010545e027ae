"""The threads that download and decode batch inputs: a pool of their own, apart from the event loop's default
executor, so that slow URLs never hold up anything else.

Its threads are daemons: a download stuck in flight (bounded by its own deadline, which may be a minute) must
not hold the worker's exit after a SIGTERM past the shutdown grace period, as the standard pool's threads,
joined at interpreter exit, would. They are started as the work needs them, an idle one taking new work
first: each thread that has decoded keeps a malloc arena whose freed blocks stay resident, so a few busy
threads hold less memory than many taking turns (the worker serving 64 inputs that each decode 600 s of audio
and are refused: +377 MB peak RSS with 12 threads started up front, +91 MB with threads started as needed).
"""

from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Work = tuple["concurrent.futures.Future[Any]", Callable[[], Any]]


class LoadPool:
    """Up to ``max_threads`` daemon threads running submitted calls first come first served."""

    def __init__(self, max_threads: int, name: str = "audio-load") -> None:
        if max_threads < 1:
            raise ValueError(f"a LoadPool needs at least one thread, got {max_threads}")
        self.max_threads = max_threads
        self._name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._closed = False

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the load pool is shut down")
            if self._idle:
                self._idle -= 1  # that thread takes this call
            elif len(self._threads) < self.max_threads:
                thread = threading.Thread(target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._queue.put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def shutdown(self) -> None:
        """No more calls; queued ones are cancelled, running ones end on their own (the threads are daemons)."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._queue.put(None)

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            future, call = work
            del work
            if self._closed or not future.set_running_or_notify_cancel():
                future.cancel()
                self._now_idle()
                continue
            try:
                result = call()
            except BaseException as exc:  # handed to the caller, who owns it from here
                self._now_idle()  # before the caller hears of it, so its next call finds this thread idle
                future.set_exception(exc)
            else:
                self._now_idle()
                future.set_result(result)
                del result
            del future, call  # what the call held (samples) belongs to its caller only

    def _now_idle(self) -> None:
        with self._lock:
            self._idle += 1
