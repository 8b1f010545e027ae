"""Run work that may wait (an early final pass) in slices, interruptible at every encoder layer and decoder step.

The engine's worker thread owns the model and serves urgent work first: a client's final, then streaming steps.
Speculative work — the early final pass, which may be thrown away — must not hold the model for the time one pass
over a long utterance takes on a CPU while another client waits for its final (it was most of the finalize latency
tail: docs/BENCHMARKS.md, "Interruptible early passes, 0.16 s, and where finals stop"). A Python call cannot be
suspended halfway, so the work runs on a helper thread that behaves as a coroutine of the worker thread:

* it only runs while the worker thread waits in :meth:`InterruptibleRunner.resume`; exactly one of the two
  threads computes at any time, so they never compete for the cores or for the model;
* at every *checkpoint* — a forward pre-hook on each subsampling convolution, each encoder layer and each
  prediction-network LSTM call (:meth:`InterruptibleRunner.watch` with
  :func:`parakeet_worker.model.checkpoint_modules`) — it hands control back when the worker's
  ``yield_when()`` says so (a final is waiting, its time slice is used), and goes on from there at the next
  ``resume``; the hooks are no-ops on every other thread;
* :meth:`InterruptibleRunner.cancel` ends the job at its next checkpoint.

While the job is suspended the worker thread may run its own inference on the same modules (they are stateless in
inference; the job keeps its intermediate tensors on its own stack). The job must use its own decoding objects
(its own :class:`parakeet_worker.model.Recognizer`), and the worker must not change the model (attention mode)
while a job is suspended — unless that change is one of the runner's *carried states*: process-wide settings
handed over with control, so neither thread runs with the other's. The oneDNN flag that
:func:`parakeet_worker.model.native_rnn_kernels` turns off during decoding is always carried; the engine's batch
runner also carries the encoder's attention mode (:class:`parakeet_worker.model.AttentionSwitch`), so a long batch
pass under local attention can be suspended while the worker steps the streams in full attention.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

_Turn = Literal["worker", "job"]


@dataclass(frozen=True)
class CarriedState:
    """A process-wide setting each side keeps its own value of across hand-overs: ``get`` reads it, ``put`` sets it."""

    get: Callable[[], Any]
    put: Callable[[Any], None]


def _set_mkldnn(enabled: Any) -> None:
    torch.backends.mkldnn.enabled = bool(enabled)


MKLDNN_FLAG = CarriedState(lambda: torch.backends.mkldnn.enabled, _set_mkldnn)


class JobCancelledError(Exception):
    """Raised inside the job at a checkpoint after :meth:`InterruptibleRunner.cancel`; the job's future is
    cancelled."""


class InterruptibleRunner:
    """One job at a time on a helper thread, run only inside :meth:`resume` (see the module docstring).

    Every method except :meth:`checkpoint` belongs to the one thread that owns the model."""

    def __init__(self, name: str = "parakeet-early-pass", carried: Sequence[CarriedState] = ()) -> None:
        self._cv = threading.Condition()
        self._carried = (MKLDNN_FLAG, *carried)
        self._turn: _Turn = "worker"
        self._job: tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None = None
        self._yield_when: Callable[[], bool] = lambda: False
        self._worker_state: list[Any] = []  # the worker's carried values, restored whenever control goes back to it
        self._cancel = False
        self._closed = False
        self._hooks: list[Any] = []
        self.yields = 0  # how many times a job handed control back before it ended
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- the owning thread ----------------------------------------------------------------------------------------
    def watch(self, modules: Iterable[torch.nn.Module]) -> None:
        """Make each module's forward a checkpoint (a pre-hook, a no-op outside the job; removed by close)."""
        for module in modules:
            self._hooks.append(module.register_forward_pre_hook(lambda _module, _args: self.checkpoint()))

    @property
    def busy(self) -> bool:
        """A job was submitted and has not ended."""
        return self._job is not None

    def submit(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Queue ``fn`` as the job; nothing runs until :meth:`resume`. One job at a time."""
        if self._closed:
            raise RuntimeError("the runner is closed")
        if self._job is not None:
            raise RuntimeError("a job is already running; resume or cancel it first")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._cancel = False
        self._job = (fn, future)
        return future

    def resume(self, yield_when: Callable[[], bool]) -> bool:
        """Run the job until it ends (True) or a checkpoint finds ``yield_when()`` true (False). Blocks meanwhile;
        ``yield_when`` is called on the job's thread. True at once when there is no job."""
        if self._job is None:
            return True
        with self._cv:
            self._yield_when = yield_when
            self._worker_state = [state.get() for state in self._carried]
            self._turn = "job"
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._turn == "worker")
        self._restore(self._worker_state)
        return self._job is None

    def finish(self) -> None:
        """Run the job to its end, whatever is waiting."""
        while not self.resume(lambda: False):
            pass

    def cancel(self) -> None:
        """End the job at its next checkpoint (it raises :class:`JobCancelledError` there; its future is
        cancelled). Returns once the job has unwound."""
        if self._job is None:
            return
        self._cancel = True
        self.finish()

    def close(self) -> None:
        """Cancel the job, remove the checkpoints and stop the helper thread."""
        self.cancel()
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        with self._cv:
            self._closed = True
            self._turn = "job"
            self._cv.notify_all()
        self._thread.join(timeout=5)

    # --- the job's thread ---------------------------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Called at every watched forward: on the job's thread, hand control back if the worker wants it."""
        if threading.get_ident() != self._thread.ident:
            return
        if not self._cancel and not self._yield_when():
            return
        if not self._cancel:
            self.yields += 1
            mine = [state.get() for state in self._carried]
            self._restore(self._worker_state)
            with self._cv:
                self._turn = "worker"
                self._cv.notify_all()
                self._cv.wait_for(lambda: self._turn == "job")
            self._restore(mine)
        if self._cancel:
            raise JobCancelledError("the job was cancelled")

    def _restore(self, values: list[Any]) -> None:
        for state, value in zip(self._carried, values):
            state.put(value)

    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._turn == "job")
                if self._closed:
                    return
                job = self._job
            if job is not None:
                fn, future = job
                try:
                    result = fn()
                except JobCancelledError:
                    future.cancel()
                except BaseException as exc:  # handed to the owner through the future, as an executor does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._cv:
                self._job = None
                self._turn = "worker"
                self._cv.notify_all()
