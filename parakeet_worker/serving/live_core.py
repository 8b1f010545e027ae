"""The session core every live face shares: what a live session does whatever protocol it speaks.

A face (the native protocol, Deepgram's ``/v1/listen``, OpenAI Realtime, Riva's ``StreamingRecognize``) is an
adapter: it parses its client's messages, turns engine events into its own messages and says how its session
opens and ends. :class:`LiveCore` holds the promises they all keep, written once:

- **One ordered outbox.** Every outgoing message goes through :meth:`LiveCore.post` to one sender task, so a slow
  reader never reorders or loses them; :meth:`LiveCore.drain` waits (bounded) until everything queued went out.
- **One ending.** However a session ends — the client's stop, idle, its length limit, its job cancelled, shutdown
  — :meth:`LiveCore.end` runs the face's ending steps (:meth:`LiveCore._ending_steps`: the final of the utterance
  in progress, the face's last message, the close) once, in a task of its own that neither the receive loop's end
  nor a cancelled caller can cut short; :meth:`LiveCore.abandon` gives up an ending that overran the shutdown
  grace period.
- **A watchdog** for the session's length limit and idle time.
- **A rate limit on control messages** (a token bucket; one notice a second, not one per refusal).
- **The engine-event hop**: engine events arrive on the engine's thread and are handed to the loop
  (:meth:`LiveCore.on_engine_event` → the face's :meth:`LiveCore._deliver`).
- **No silent loss**: :class:`LiveStream` stops an engine stream and says whether its last final was served, so
  the face can say ``final_unavailable`` in its own words instead of answering as if it had been.
- **One record** per session in the metrics when it is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import numpy as np

from parakeet_worker.errors import ParakeetError
from parakeet_worker.observability import Metrics
from parakeet_worker.serving.protocol import MAX_CONTROL_BURST, MAX_CONTROL_RATE_PER_S, EndReason, ErrorCode
from parakeet_worker.streaming import StreamEvent, StreamHandle

logger = logging.getLogger(__name__)

STOP_WAIT_S = 30.0  # at a session's end, how long the engine may take to serve the last finals
DRAIN_WAIT_S = 10.0  # ... and the queued messages to reach a slow reader before the close
WATCHDOG_PERIOD_S = 0.5
NOTICE_PERIOD_S = 1.0  # a notice a client's repeated mistake would repeat: at most one per key and this long
# Ends that are no fault of the session; the metric records any other reason as its error code.
NORMAL_ENDS = frozenset(EndReason) - {EndReason.NO_CLIENT}


class LiveStream:
    """One engine stream of a session and whether (and why) it closed."""

    def __init__(self, handle: StreamHandle) -> None:
        self.handle = handle
        self.closed = asyncio.Event()
        self.closed_reason = ""  # ``stop`` once its last final was served

    def mark_closed(self, reason: str) -> None:
        """The engine's ``closed`` event for this stream (on the loop)."""
        self.closed_reason = reason
        self.closed.set()

    def push_tail(self, tail: np.ndarray | None) -> None:
        """The decoder's last samples (its resampler's delay line); a full backlog drops them like any frame."""
        if tail is not None and tail.size and not self.handle.closed:
            with contextlib.suppress(ParakeetError):
                self.handle.push(tail)

    async def stop(self, tail: np.ndarray | None = None) -> str | None:
        """Push ``tail``, stop the stream and wait for its last final: ``None`` once it was served, else why it
        was lost (the stream is aborted if the engine did not answer in time)."""
        if not self.handle.closed:
            self.push_tail(tail)
            self.handle.stop()
        return await self.wait_closed()

    async def wait_closed(self, timeout_s: float = STOP_WAIT_S) -> str | None:
        """Wait for the stream's close (it was stopped): ``None`` if its last final was served, else why not."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout=timeout_s)
        if self.closed_reason == "stop":
            return None
        if not self.closed.is_set():
            self.handle.abort()
            return f"the engine did not produce it within {timeout_s:.0f} s"
        return f"the engine closed the stream first ({self.closed_reason or 'unknown'})"


class LiveCore:
    """The protocol-neutral half of one live session; a face subclasses it and fills in the hooks (methods
    raising :class:`NotImplementedError` and the ones documented as hooks).

    ``transmit`` sends one queued message to the client (a WebSocket's ``send_text``, a gRPC context's
    ``write``); an exception in ``gone`` means the client is gone and the sender stops.
    """

    face: ClassVar[str] = "unknown"  # the metrics' face label

    def __init__(self, *, session_id: str, metrics: Metrics, idle_timeout_s: float, max_session_s: float,
                 transmit: Callable[[Any], Awaitable[None]], gone: tuple[type[BaseException], ...]) -> None:
        self.id = session_id
        self.metrics = metrics
        self.idle_timeout_s = idle_timeout_s
        self.max_session_s = max_session_s
        self.loop = asyncio.get_running_loop()
        self.opened = self.last_activity = time.monotonic()
        self.reason: EndReason | None = None
        self.error_code: str | None = None  # what the session lost (``final_unavailable``), for the summary/metric
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.refused_messages = 0
        self._transmit = transmit
        self._gone = gone
        self._sender: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None
        self._control_tokens = float(MAX_CONTROL_BURST)
        self._control_at = self.opened
        self._notice_at: dict[str, float] = {}

    # --- hooks --------------------------------------------------------------------------------------------------
    async def _receive_loop(self) -> None:
        """Read the client's messages until it is gone (or the ending is done)."""
        raise NotImplementedError

    async def _ending_steps(self, reason: EndReason) -> None:
        """The face's ending: the final(s) of the utterance in progress, its last message, :meth:`drain`, the
        close. Runs once, whatever ended the session."""
        raise NotImplementedError

    def _deliver(self, event: StreamEvent) -> None:
        """One engine event, on the loop."""
        raise NotImplementedError

    def _release(self) -> bool:
        """Abort the engine streams still open (nobody is left to read their finals); True if there were any."""
        raise NotImplementedError

    async def _close_transport(self, code: int, reason: str) -> None:
        """Close the client's connection (idempotent; never raises)."""
        raise NotImplementedError

    def _end_notice(self, reason: EndReason) -> Any | None:
        """The message a session ended by the server for ``reason`` gets first (shutdown, cancelled, its length
        limit, idle), or None. Hook; the default sends none."""
        return None

    def _rate_notice(self) -> Any:
        """The message a client gets when its control messages go over the rate limit (once a second)."""
        raise NotImplementedError

    @property
    def audio_seconds(self) -> float:
        """The audio the session heard (for its record)."""
        raise NotImplementedError

    def _record_fields(self) -> dict[str, Any]:
        """More fields for the session's metrics record (``job_id``, ``active_sessions``). Hook."""
        return {}

    def _closed_log(self) -> str:
        """What the close's log line says after the reason (hook)."""
        return f"{self.audio_seconds:.1f} s of audio"

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def run(self, *first: Any) -> None:
        """Serve the session: ``first`` messages are posted before any other, then the receive loop runs; when it
        ends (the client left, or the ending is done) the session is closed and recorded."""
        self._sender = asyncio.create_task(self._send_loop(), name=f"send-{self.id}")
        watchdog = asyncio.create_task(self._watchdog(), name=f"watch-{self.id}")
        for message in first:
            self.post(message)
        try:
            await self._receive_loop()
        finally:
            await self._finish(watchdog)

    async def _finish(self, watchdog: asyncio.Task[None]) -> None:
        if self._ending is not None:  # a server-side end in progress: it sends the final(s) and the close
            with contextlib.suppress(Exception, asyncio.CancelledError):  # abandon() cancels it
                await asyncio.shield(self._ending)
        if self.reason is None:
            self.reason = EndReason.DISCONNECT
        self._release()
        watchdog.cancel()
        self.outbox.put_nowait(None)
        if self._sender is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        logger.info("%s session %s closed: %s, %s", self.face, self.id, self.reason, self._closed_log())
        error_code = self.error_code or (None if self.reason in NORMAL_ENDS else self.reason.value)
        self.metrics.record("stream", audio_s=self.audio_seconds, total_s=time.monotonic() - self.opened,
                            session_id=self.id, error_code=error_code, face=self.face, **self._record_fields())

    def begin_end(self, reason: EndReason, notice: Any | None = None) -> asyncio.Task[None]:
        """Start ending the session (the first call wins): ``notice`` (by default :meth:`_end_notice`'s) goes
        first, then the face's ending steps run in a task of their own, which is returned."""
        if self._ending is None:
            self.reason = reason
            notice = notice if notice is not None else self._end_notice(reason)
            if notice is not None:
                self.post(notice)
            self._ending = asyncio.create_task(self._ending_steps(reason), name=f"end-{self.id}")
        return self._ending

    async def end(self, reason: EndReason, notice: Any | None = None) -> None:
        """End the session (any reason) and wait for the ending; later calls wait for the first one's."""
        await asyncio.shield(self.begin_end(reason, notice))

    def release(self) -> None:
        """The connection is over: engine streams still open are aborted (nobody is left to read their finals)."""
        self._release()

    @property
    def ending(self) -> bool:
        return self._ending is not None

    def ended(self) -> bool:
        """The ending is done (the receive loop may stop reading)."""
        return self._ending is not None and self._ending.done()

    def abandon(self) -> None:
        """Give up an ending that overran the server's grace period (or never began): the finals it waited for
        are lost (``final_unavailable``) and the connection is closed now, with the reason's code."""
        if self.ended():
            return
        if self._release() or self._ending is not None:
            self.error_code = ErrorCode.FINAL_UNAVAILABLE.value
        if self._ending is not None:
            self._ending.cancel()
        reason = self.reason = self.reason or EndReason.SERVER_SHUTDOWN
        self._closer = self.loop.create_task(self._close_transport(reason.close_code, reason.value),
                                             name=f"close-{self.id}")  # referenced until done

    async def _watchdog(self) -> None:
        while self._ending is None:
            await asyncio.sleep(WATCHDOG_PERIOD_S)
            now = time.monotonic()
            if self._ending is not None:
                return
            if now - self.opened > self.max_session_s:
                await self.end(EndReason.MAX_SESSION_LENGTH)
            elif now - self.last_activity > self.idle_timeout_s:
                await self.end(EndReason.IDLE_TIMEOUT)

    def stream_closed(self, stream: LiveStream | None, reason: str) -> bool:
        """The engine's ``closed`` event for ``stream``: it is marked closed; when the engine ended it (``error``,
        ``engine_closed``) while the session was not ending, the session ends (its final first) and True is
        returned so the face can say so its own way."""
        if stream is not None:
            stream.mark_closed(reason)
        if reason not in ("error", "engine_closed") or self.ending:
            return False
        self.error_code = "engine_error" if reason == "error" else ErrorCode.ENGINE_CLOSED.value
        self.begin_end(EndReason.SERVER_SHUTDOWN)
        return True

    def final_lost(self, why: str) -> None:
        """A final the engine could not produce (``why``): the session's summary and metric say
        ``final_unavailable``; the face tells its client in its own words."""
        self.error_code = ErrorCode.FINAL_UNAVAILABLE.value
        logger.error("%s session %s: the last utterance's final was lost: %s", self.face, self.id, why)

    def touch(self) -> None:
        """The client sent something: the idle clock restarts."""
        self.last_activity = time.monotonic()

    # --- outgoing -----------------------------------------------------------------------------------------------
    def post(self, message: Any) -> None:
        """Queue one message for the client (in order, after everything queued before)."""
        self.outbox.put_nowait(message)

    def notice_once(self, key: str, message: Any) -> None:
        """Post a message a client's repeated mistake would repeat: at most one per ``key`` and second."""
        now = time.monotonic()
        if now - self._notice_at.get(key, float("-inf")) >= NOTICE_PERIOD_S:
            self._notice_at[key] = now
            self.post(message)

    async def drain(self) -> None:
        """Let the sender send everything queued, then end it (bounded: a reader that stopped reading gets
        :data:`DRAIN_WAIT_S`). Nothing posted after this is sent."""
        self.outbox.put_nowait(None)
        if self._sender is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._sender), timeout=DRAIN_WAIT_S)

    async def _send_loop(self) -> None:
        while True:
            message = await self.outbox.get()
            if message is None:
                return
            try:
                await self._transmit(message)
            except self._gone:
                return

    # --- incoming -----------------------------------------------------------------------------------------------
    def admit_control(self, always: Callable[[], bool] | None = None) -> bool:
        """The per-session token bucket on control messages. Past it a message is refused (the face's
        :meth:`_rate_notice`, once a second) unless ``always()`` says it must be honoured (a stop)."""
        now = time.monotonic()
        self._control_tokens = min(float(MAX_CONTROL_BURST),
                                   self._control_tokens + (now - self._control_at) * MAX_CONTROL_RATE_PER_S)
        self._control_at = now
        if self._control_tokens >= 1.0:
            self._control_tokens -= 1.0
            return True
        if always is not None and always():
            return True
        self.refused_messages += 1
        if now - self._notice_at.get("rate", float("-inf")) >= NOTICE_PERIOD_S:
            logger.warning("%s session %s: control messages over %.0f/s refused (%d so far)", self.face, self.id,
                           MAX_CONTROL_RATE_PER_S, self.refused_messages)
        self.notice_once("rate", self._rate_notice())
        return False

    # --- engine events (called on the engine's thread) ------------------------------------------------------------
    def on_engine_event(self, event: StreamEvent) -> None:
        """The engine's callback: hands the event to the loop (:meth:`_deliver`)."""
        self.loop.call_soon_threadsafe(self._deliver, event)


__all__ = ["DRAIN_WAIT_S", "NORMAL_ENDS", "STOP_WAIT_S", "LiveCore", "LiveStream"]
