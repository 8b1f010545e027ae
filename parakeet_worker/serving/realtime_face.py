"""The OpenAI Realtime transcription face: ``/v1/realtime?intent=transcription`` over the engine's live streams.

A client (the openai SDK's ``client.realtime.connect``, Pipecat's ``OpenAIRealtimeSTTService``) gets
``session.created``, configures the session (GA ``session.update`` with ``session.type: "transcription"``, or the
beta ``transcription_session.update``), appends base64 audio and either commits each utterance itself
(``turn_detection: null``: a commit is the engine's finalize) or lets our VAD end them (``server_vad``:
``speech_started`` / ``speech_stopped`` / ``committed``). Each utterance is one conversation item: append-only
``...transcription.delta`` events (a :class:`StablePrefix` over the revisable partials) and one ``.completed``.

The session keeps every live face's promises, written once in the session core
(:mod:`parakeet_worker.serving.live_core`): one ordered outbox and sender; one ending task however the session ends
(here: the utterance in progress gets its final — or a ``failed`` event, never silence — then the close); idle and
session-length watchdog; a rate limit on control events.
``input_audio_buffer.clear`` retires the engine stream (aborted, or stopped when committed finals are still due;
the cleared utterance's final is dropped) and the next append opens a fresh one; a new turn detection retires it
too, after committing and completing the utterance in progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from typing import Any

import numpy as np
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from parakeet_worker.audio.live import LiveAudioDecoder
from parakeet_worker.errors import EngineClosedError, EngineOverloadedError, ParakeetError
from parakeet_worker.observability import log_context
from parakeet_worker.serving import protocol as proto
from parakeet_worker.serving import realtime_events as ev
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.live_core import STOP_WAIT_S, LiveCore, LiveStream
from parakeet_worker.serving.protocol import EndReason
from parakeet_worker.serving.realtime_events import END_NOTICES, Event, Item, RealtimeRequestError, SessionConfig, Track
from parakeet_worker.streaming import FinalizeLimitError, StepResult, StreamBacklogError, StreamEvent
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger("parakeet_worker.serving.realtime")

PATH = "/v1/realtime"
_GONE = (WebSocketDisconnect, WebSocketDisconnected, OSError)
class RealtimeSession(LiveCore):
    """One client's transcription session: its configuration, engine streams and items, on the shared session
    core (:class:`~parakeet_worker.serving.live_core.LiveCore`)."""

    face = "realtime"  # the metrics' face label

    def __init__(self, ctx: FaceContext, websocket: WebSocket, *, model: str, dialect: ev.Dialect) -> None:
        super().__init__(session_id="sess_" + uuid.uuid4().hex[:20], metrics=ctx.metrics,
                         idle_timeout_s=ctx.limits.idle_timeout_s, max_session_s=ctx.limits.max_session_s,
                         transmit=websocket.send_text, gone=_GONE)
        self.ctx = ctx
        self.ws = websocket
        self.config = SessionConfig(model=model)
        self.dialect: ev.Dialect = dialect
        self.decoder = LiveAudioDecoder(self.config.encoding, self.config.rate)
        self.track: Track | None = None  # the stream new audio goes to (None: opened by the next append)
        self.tracks: dict[str, Track] = {}  # every stream not yet closed, by stream id
        self._stream_ids = itertools.count(1)
        self.heard_s = 0.0  # audio appended, at the client's rates
        self.uncommitted = False  # audio appended since the last commit or clear
        self.last_item: str | None = None  # the last committed item (``previous_item_id``)
        self.completed_items = 0
        self.revised_items = 0  # finals that revised words already sent as deltas
        self._events = itertools.count(1)

    # --- lifecycle ----------------------------------------------------------------------------------------------
    async def run(self, *first: Any) -> None:
        logger.info("realtime session %s opened", self.id)
        created = "session.created" if self.dialect == "ga" else "transcription_session.created"
        await super().run(*first, self._event({"type": created, "session": self._session_shape(self.dialect)}))

    async def _receive_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except _GONE:
                return
            if message["type"] == "websocket.disconnect":
                return
            self.touch()
            try:
                text = message.get("text")
                if text is None:
                    raise RealtimeRequestError("binary frames are not part of the Realtime protocol: send audio "
                                               "base64-encoded in input_audio_buffer.append", code="unsupported_frame")
                self._on_text(text)
            except RealtimeRequestError as exc:
                self._emit(exc.event())

    def _end_notice(self, reason: EndReason) -> str | None:
        if reason not in END_NOTICES:
            return None
        code, text = END_NOTICES[reason]
        return self._event(ev.error_event(text.format(idle=self.idle_timeout_s, max=self.max_session_s), code=code))

    def _rate_notice(self) -> str:
        return self._event(ev.error_event(f"more than {proto.MAX_CONTROL_RATE_PER_S:.0f} events per second besides "
                                          "audio appends; events were dropped: slow down", code="rate_limited",
                                          error_type="invalid_request_error"))

    async def _ending_steps(self, reason: EndReason) -> None:
        """The utterance in progress committed and completed (or failed), everything queued sent, the close."""
        if self.track is not None:
            self._retire(stop=True)
        pending = [t for t in self.tracks.values() if not t.stream.closed.is_set()]
        await asyncio.gather(*(t.stream.wait_closed() for t in pending))  # aborts a stream not served in time
        for track in list(self.tracks.values()):  # the engine did not serve them in time
            self._lost(track, f"the engine did not produce it within {STOP_WAIT_S:.0f} s")
        await self.drain()
        await self._close_transport(reason.close_code, reason.value)

    async def _close_transport(self, code: int, reason: str) -> None:
        with contextlib.suppress(*_GONE, RuntimeError):
            await self.ws.close(code, reason)

    def _release(self) -> bool:
        open_tracks = [t for t in self.tracks.values() if not t.handle.closed]
        for track in open_tracks:
            track.handle.abort()
        return bool(open_tracks)

    @property
    def audio_seconds(self) -> float:
        return self.heard_s

    def _record_fields(self) -> dict[str, Any]:
        return {"active_sessions": self.ctx.engine.stream_stats().active}

    def _closed_log(self) -> str:
        return (f"{self.heard_s:.1f} s of audio, {self.completed_items} items ({self.revised_items} finals revised "
                "a delta)")

    # --- outgoing -----------------------------------------------------------------------------------------------
    def _event(self, event: Event) -> str:
        """The event as sent, with its ``event_id``."""
        event["event_id"] = f"event_{self.id[5:17]}{next(self._events)}"
        return json.dumps(event)

    def _emit(self, event: Event) -> None:
        self.post(self._event(event))

    def _session_shape(self, dialect: ev.Dialect) -> Event:
        expires_at = int(time.time() + self.ctx.limits.max_session_s - (time.monotonic() - self.opened))
        if dialect == "ga":
            return self.config.ga_session(self.id, expires_at)
        return self.config.beta_session(self.id, expires_at)

    # --- incoming -----------------------------------------------------------------------------------------------
    def _on_text(self, text: str) -> None:
        kind, event, event_id = ev.parse_client_event(text)
        try:
            if kind == "input_audio_buffer.append":  # the hot path: audio is not rate limited
                self._append(event)
            elif self.admit_control():
                self._on_control(kind, event)
        except RealtimeRequestError as exc:
            exc.event_id = exc.event_id or event_id
            raise

    def _on_control(self, kind: str, event: Event) -> None:
        if kind in ("session.update", "transcription_session.update"):
            self._update(event)
        elif kind == "input_audio_buffer.commit":
            self._commit()
        elif kind == "input_audio_buffer.clear":
            self._clear()
        elif kind in ev.CONVERSATION_EVENTS:
            raise RealtimeRequestError(f"{kind} is not served: this is a transcription session (no responses, no "
                                       "conversation items from the client)", code="unsupported_event", param="type")
        else:
            raise RealtimeRequestError(f"unknown event type {kind!r}: a transcription session takes session.update, "
                                       "transcription_session.update and input_audio_buffer.append/commit/clear",
                                       code="unknown_event", param="type")

    def _update(self, event: Event) -> None:
        old = self.config
        new, dialect = ev.parse_session_update(event, old)
        self.config = new
        if (new.encoding, new.rate) != (old.encoding, old.rate):
            if self.track is not None:
                self._push(self.track, self.decoder.flush())
            self.decoder = LiveAudioDecoder(new.encoding, new.rate)
        if new.stream_options() != old.stream_options() and self.track is not None:
            self._retire(stop=True)  # the utterance in progress is committed and completed under the old settings
        if event["type"] == "transcription_session.update":
            self.dialect = "beta"
            self._emit({"type": "transcription_session.updated", "session": self._session_shape("beta")})
        else:
            self._emit({"type": "session.updated", "session": self._session_shape(dialect)})

    def _append(self, event: Event) -> None:
        decoder = self.decoder
        max_s = self.ctx.limits.max_frame_audio_s
        data = ev.append_bytes(event, int(max_s * decoder.sample_rate * decoder.bytes_per_sample), max_s)
        if self.ending:
            return  # the session is ending: audio after that is not heard
        try:
            samples = decoder.decode(data)
        except ParakeetError as exc:
            raise RealtimeRequestError(f"{exc}; this append was dropped", code="invalid_audio",
                                       param="audio") from None
        if not data:
            return
        self.heard_s += len(data) / decoder.bytes_per_sample / decoder.sample_rate
        self.uncommitted = True
        self._push(self.track or self._open_track(len(data)), samples)

    def _open_track(self, appended_bytes: int) -> Track:
        decoder = self.decoder
        offset_s = self.heard_s - appended_bytes / decoder.bytes_per_sample / decoder.sample_rate
        stream_id = f"{self.id}-{next(self._stream_ids)}"
        options = self.config.stream_options()
        try:
            handle = self.ctx.engine.open_stream(self.on_engine_event, options, stream_id=stream_id)
        except EngineClosedError as exc:
            raise RealtimeRequestError(str(exc), code="engine_closed", error_type="server_error") from None
        turn = self.config.turn_detection
        track = Track(stream=LiveStream(handle), vad=options.endpointing, prefix_ms=turn.prefix_padding_ms if turn else 0,
                      offset_ms=offset_s * 1000)
        self.tracks[stream_id] = self.track = track
        return track

    def _push(self, track: Track, samples: np.ndarray) -> None:
        if not samples.size:
            return
        try:
            track.handle.push(samples)
        except StreamBacklogError as exc:
            raise RealtimeRequestError(f"{exc}; {samples.size / SAMPLE_RATE_HZ:.3f} s of audio were dropped",
                                       code="stream_backlog", error_type="server_error") from None
        except EngineClosedError as exc:
            if self.track is track:
                self.track = None
            raise RealtimeRequestError(f"{exc}; the audio was dropped", code="engine_closed",
                                       error_type="server_error") from None
        except EngineOverloadedError as exc:
            raise RealtimeRequestError(str(exc), code="overloaded", error_type="server_error") from None

    def _commit(self) -> None:
        track = self.track
        if not self.uncommitted or track is None:
            raise RealtimeRequestError("the input audio buffer is empty: append audio before committing",
                                       code="input_audio_buffer_commit_empty")
        with contextlib.suppress(RealtimeRequestError):  # a full backlog drops the tail like any audio
            self._push(track, self.decoder.flush())
        try:
            track.handle.finalize()
        except FinalizeLimitError as exc:
            raise RealtimeRequestError(str(exc), code="rate_limited") from None
        except EngineClosedError as exc:
            raise RealtimeRequestError(str(exc), code="engine_closed", error_type="server_error") from None
        item = track.item(track.open_utterance)
        track.commits += 1
        self.uncommitted = False
        self._commit_item(item)

    def _clear(self) -> None:
        if self.track is not None and self.uncommitted:
            self.decoder.flush()  # the resampler's tail belongs to the cleared audio
            track = self.track
            track.cut = track.open_utterance
            self._retire(stop=track.commits > 0)  # committed finals still due: stop, and drop the cleared one's
        self.uncommitted = False
        self._emit({"type": "input_audio_buffer.cleared"})

    def _retire(self, *, stop: bool) -> None:
        """New audio goes to a new stream; this one ends: ``stop`` serves its remaining finals (the uncommitted
        audio's too, unless cut), else it is aborted."""
        track = self.track
        assert track is not None
        self.track = None
        if stop:
            if track.cut is None:
                with contextlib.suppress(RealtimeRequestError):
                    self._push(track, self.decoder.flush())
            track.handle.stop()
        else:
            track.handle.abort()
        self.uncommitted = False

    # --- items --------------------------------------------------------------------------------------------------
    def _commit_item(self, item: Item) -> None:
        item.committed = item.announced = True
        self._emit(ev.committed(item.id, self.last_item))
        self._emit(ev.item_added(item.id, self.last_item, self.dialect))
        self.last_item = item.id

    # --- engine events (handed to the loop by LiveCore.on_engine_event) -------------------------------------------
    def _deliver(self, event: StreamEvent) -> None:
        track = self.tracks.get(event.stream_id)
        if track is None:
            return
        if event.kind == "closed":
            self._closed(track, event.reason)
        elif event.kind == "error":
            text = str(event.error)
            if isinstance(event.error, StreamBacklogError):
                text += f"; audio dropped: {event.error.dropped_s:.3f} s"
            code = getattr(event.error, "code", "engine_error")
            self._emit(ev.error_event(text, code=code))
        elif track.cut is not None and event.utterance >= track.cut:
            return  # cleared audio
        elif event.kind in ("speech_start", "speech_stop"):
            said = track.speech(event.kind == "speech_start", event.utterance, event.at_s or 0.0) if track.vad else None
            if said is not None:
                self._emit(said)
        elif event.result is not None and event.kind == "partial":
            self._partial(track, event.utterance, event.result)
        elif event.result is not None:
            self._final(track, event.utterance, event.result, event.reason)

    def _partial(self, track: Track, utterance: int, result: StepResult) -> None:
        if not result.text:
            return
        item = track.item(utterance)
        piece = item.stable.partial(result.committed_text) if self.config.interim_deltas else ""
        if piece:
            item.announced = True
            self._emit(ev.delta(item.id, piece))

    def _final(self, track: Track, utterance: int, result: StepResult, reason: str) -> None:
        item = track.item(utterance)
        track.next_utterance = utterance + 1
        if reason == "finalize":
            track.commits = max(0, track.commits - 1)
        if not item.committed:
            self._commit_item(item)
        transcript = result.committed_text
        piece = item.stable.final(transcript)
        if piece:
            self._emit(ev.delta(item.id, piece))
        self._complete(track, utterance, item, transcript, result.audio_end_s - track.last_end_s)
        track.last_end_s = result.audio_end_s

    def _complete(self, track: Track, utterance: int, item: Item, transcript: str, audio_s: float) -> None:
        if item.stable.revised:
            self.revised_items += 1
        self.completed_items += 1
        self._emit(ev.completed(item.id, transcript, audio_s))
        del track.items[utterance]

    def _closed(self, track: Track, reason: str) -> None:
        """A stream closed: an item the client knows of whose final never came is completed empty (a stop with
        nothing left to transcribe) or failed (the engine lost it); cleared items are dropped."""
        del self.tracks[track.handle.stream_id]
        if self.track is track:
            self.track = None
        if reason == "stop":
            for utterance, item in sorted(track.items.items()):
                if item.announced and (track.cut is None or utterance < track.cut):
                    if not item.committed:
                        self._commit_item(item)
                    item.stable.final("")
                    self._complete(track, utterance, item, "", 0.0)
        elif reason != "abort":
            self._lost(track, f"the engine closed the stream ({reason})")
        track.stream.mark_closed(reason)

    def _lost(self, track: Track, why: str) -> None:
        for utterance, item in sorted(track.items.items()):
            if item.announced and (track.cut is None or utterance < track.cut):
                self.error_code = "final_unavailable"
                logger.error("realtime session %s: an item's final was lost: %s", self.id, why)
                self._emit(ev.failed(item.id, "final_unavailable", f"the transcript could not be produced: {why}; "
                                                                   "send that audio again"))
        track.items.clear()
        self.tracks.pop(track.handle.stream_id, None)


# --- the route ----------------------------------------------------------------------------------------------------
def _denial(message: str, code: str, status: int, retry_after_s: float = 0.0) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(retry_after_s)))} if retry_after_s > 0 else None
    return JSONResponse(ev.denial_body(message, code), status_code=status, headers=headers)


def routes(ctx: FaceContext) -> list[BaseRoute]:
    """The face's one route: ``/v1/realtime`` (any ``intent``/``model`` query is accepted)."""
    model = ctx.engine.info().model

    async def realtime(websocket: WebSocket) -> None:
        subprotocol, protocol_token = ev.subprotocol_token(list(websocket.scope.get("subprotocols", [])))
        token = request_token(websocket.headers, websocket.query_params) or protocol_token
        address = websocket.client.host if websocket.client else "unknown"
        if not ctx.authorize(token):
            wait_s = ctx.refused(address, "no token" if not token else "an unknown token")
            await websocket.send_denial_response(_denial(
                "missing or invalid API key: pass the worker's token as `Authorization: Bearer <token>` (the "
                "openai SDK's api_key) or ?token=", "invalid_api_key", 401, wait_s))
            return
        if not ctx.ready():
            await websocket.send_denial_response(_denial("the model is still loading; retry shortly",
                                                         "model_loading", 503, 1.0))
            return
        beta = websocket.headers.get("openai-beta", "").replace(" ", "").lower().startswith("realtime=v1")
        session = RealtimeSession(ctx, websocket, model=model, dialect="beta" if beta else "ga")
        refusal = ctx.sessions.admit(session)
        if refusal is not None:
            await websocket.send_denial_response(_denial(refusal, "server_busy", 503, 1.0))
            return
        try:
            with log_context(session_id=session.id):
                await websocket.accept(subprotocol=subprotocol)
                await session.run()
        finally:
            ctx.sessions.leave(session)

    return [WebSocketRoute(PATH, realtime)]


__all__ = ["PATH", "RealtimeSession", "routes"]
