"""The worker's one HTTP/WebSocket app (parakeet_worker/serving/app.py) on a real localhost socket, served by the
real server (uvicorn under StreamServer) over the real engine: the health routes, ``/metrics`` after real traffic,
the native face's plain-HTTP answer, and a second face whose sessions share the worker's session limit, token
check and shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from parakeet_worker.config import Settings
from parakeet_worker.serving import native_face
from parakeet_worker.serving.app import face_label
from parakeet_worker.serving.faces import FaceContext, request_token
from parakeet_worker.serving.protocol import EndReason
from parakeet_worker.serving.standalone import standalone_token
from parakeet_worker.serving.ws_server import ServerLimits, StreamServer, listen_socket
from tests.test_websocket import engine, recv, run_to_stop, send_audio, started, url  # noqa: F401

TOKEN = "test-token"
SETTINGS = replace(Settings(), ws_host="127.0.0.1", ws_port=0)


def http(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP GET: (status, headers, body), error statuses included."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http, port, path, headers)


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` parsed: (sample name, labels) -> value."""
    status, headers, body = await get(port, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until ``check()`` (the server records a session's end just after the client saw it close)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "the condition did not come true in time"
        await asyncio.sleep(0.05)


@pytest.fixture
async def server(engine) -> AsyncIterator[StreamServer]:  # noqa: F811
    srv = StreamServer(engine, SETTINGS, ServerLimits(max_sessions=4, idle_timeout_s=30.0))
    await srv.start()
    srv.grant(None, token=TOKEN, multi_use=True)
    yield srv
    await srv.stop()


# --- the worker's routes --------------------------------------------------------------------------------------
async def test_healthz_is_alive_and_readyz_follows_the_model(engine) -> None:  # noqa: F811
    ready = False
    srv = StreamServer(engine, SETTINGS, ready=lambda: ready)
    await srv.start()
    try:
        status, _, body = await get(srv.port, "/healthz")
        assert (status, json.loads(body)) == (200, {"status": "alive"})
        status, _, body = await get(srv.port, "/readyz")
        assert (status, json.loads(body)) == (503, {"status": "loading"})
        ready = True
        status, _, body = await get(srv.port, "/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ready", "sessions": 0})
    finally:
        await srv.stop()


async def test_a_plain_get_of_the_root_is_the_browser_page(server) -> None:
    status, headers, body = await get(server.port, "/")  # the WebSocket at / is the native protocol's
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8" and b"/static/app.js" in body


async def test_metrics_count_a_real_session_and_a_refused_handshake(server, heldout_clips) -> None:
    clip = heldout_clips[4].audio
    ws = await started(server, endpointing=False)
    await send_audio(ws, clip)
    _, stopped = await run_to_stop(ws)
    await ws.wait_closed()
    with pytest.raises(InvalidStatus) as refusal:
        await connect(url(server, "not-the-token"))
    assert refusal.value.response.status_code == 401
    await get(server.port, "/")  # the browser page
    await eventually(lambda: server.active_sessions == 0)

    samples = await scrape(server.port)
    native = {"face": "native", "route": "/"}
    assert sample(samples, "parakeet_requests_total", **native, status="101") == 1
    assert sample(samples, "parakeet_requests_total", **native, status="401") == 1
    assert sample(samples, "parakeet_requests_total", face="page", route="/", status="200") == 1
    assert sample(samples, "parakeet_sessions_opened_total", face="native") == 1
    assert sample(samples, "parakeet_sessions_active", face="native") == 0
    assert sample(samples, "parakeet_finished_total", face="native", kind="stream", outcome="ok") == 1
    heard = sample(samples, "parakeet_audio_seconds_total", face="native")
    assert stopped["audio_seconds"] > 1.0 and heard == pytest.approx(stopped["audio_seconds"], abs=0.001)
    assert not any(name == "parakeet_errors_total" for name, _ in samples)  # a clean session is no error
    again = await scrape(server.port)  # the scrape itself is a request of the worker's face
    assert sample(again, "parakeet_requests_total", face="worker", route="/metrics", status="200") == 1


async def test_each_server_has_its_own_metrics(server, engine) -> None:  # noqa: F811
    other = StreamServer(engine, SETTINGS)
    await other.start()
    try:
        await get(server.port, "/")
        samples = await scrape(other.port)
    finally:
        await other.stop()
    assert sample(samples, "parakeet_requests_total", face="page", route="/", status="200") is None


# --- a second face on the same app -------------------------------------------------------------------------------
class HeldSession:
    """A test face's live session: it holds its socket until the server ends it."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.reason: EndReason | None = None

    async def end(self, reason: EndReason) -> None:
        if self.reason is None:
            self.reason = reason
            await self.websocket.send_text(f"ended: {reason.value}")
            await self.websocket.close(1001, reason.value)

    def abandon(self) -> None:
        self.reason = self.reason or EndReason.SERVER_SHUTDOWN


def held_face(ctx: FaceContext) -> list[BaseRoute]:
    """``/held``: admitted with the worker's token and session registry, like every face."""

    async def held(websocket: WebSocket) -> None:
        if not ctx.authorize(request_token(websocket.headers, websocket.query_params)):
            await websocket.send_denial_response(JSONResponse({"error": "unauthorized"}, status_code=401))
            return
        session = HeldSession(websocket)
        busy = ctx.sessions.admit(session)
        if busy is not None:
            await websocket.send_denial_response(JSONResponse({"error": busy}, status_code=503))
            return
        try:
            await websocket.accept()
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            ctx.sessions.leave(session)

    return [WebSocketRoute("/held", held)]


async def test_a_second_faces_sessions_share_the_limit_the_token_and_the_shutdown(engine) -> None:  # noqa: F811
    assert face_label(held_face) == "test_app" and face_label(native_face.routes) == "native"
    srv = StreamServer(engine, SETTINGS, ServerLimits(max_sessions=2), faces=(native_face.routes, held_face))
    await srv.start()
    srv.grant(None, token=TOKEN, multi_use=True)
    held_url = f"ws://127.0.0.1:{srv.port}/held"
    try:
        with pytest.raises(InvalidStatus) as refusal:
            await connect(held_url + "?token=wrong")
        assert refusal.value.response.status_code == 401
        held = await connect(held_url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
        native = await started(srv, endpointing=False)
        assert srv.active_sessions == 2
        with pytest.raises(InvalidStatus) as busy:  # the limit counts both faces' sessions
            await connect(url(srv))
        assert busy.value.response.status_code == 503
        assert "busy (2 sessions)" in json.loads(busy.value.response.body)["error"]
        with pytest.raises(InvalidStatus) as busy_held:
            await connect(held_url + f"?token={TOKEN}")
        assert busy_held.value.response.status_code == 503
        samples = await scrape(srv.port)
        assert sample(samples, "parakeet_sessions_active", face="test_app") == 1
        assert sample(samples, "parakeet_sessions_active", face="native") == 1
        await send_audio(native, np.zeros(16000, np.float32))  # audio in flight when the server shuts down
        await srv.shutdown(10.0)
    finally:
        await srv.shutdown(1.0)
    assert await asyncio.wait_for(held.recv(), 5) == "ended: server_shutdown"
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(held.recv(), 5)
    assert held.close_code == 1001 and held.close_reason == "server_shutdown"
    messages = []
    with pytest.raises(ConnectionClosed):
        while True:
            messages.append(await recv(native, 10))
    assert [m["type"] for m in messages if m["type"] != "transcription"] == ["error", "stopped"]
    assert messages[0]["code"] == "server_shutdown" and messages[-1]["reason"] == "server_shutdown"
    assert native.close_code == 1001 and srv.active_sessions == 0


async def test_sessions_that_overrun_the_shutdown_grace_are_abandoned_and_closed(engine, heldout_clips) -> None:  # noqa: F811
    """No grace at all: the session's final cannot be served in time, so its ending is given up — the summary
    says the final was lost, and the socket is still closed the way a shutdown closes it (1001)."""
    srv = StreamServer(engine, SETTINGS)
    await srv.start()
    grant = srv.grant("job-late")
    try:
        ws = await connect(url(srv, grant.token))
        assert (await recv(ws))["type"] == "welcome"
        await ws.send(json.dumps({"action": "start", "sample_rate": 16000, "endpointing": False}))
        assert (await recv(ws))["type"] == "started"
        await send_audio(ws, heldout_clips[1].audio[: 16000 * 2])
        await srv.shutdown(0.0)
        summary = await asyncio.wait_for(asyncio.wrap_future(grant.summary), 10)
    finally:
        await srv.shutdown(1.0)
    with pytest.raises(ConnectionClosed):
        while True:
            await recv(ws, 10)
    assert ws.close_code == 1001 and ws.close_reason == "server_shutdown"
    assert summary.reason == "server_shutdown" and summary.error_code == "final_unavailable"
    assert srv.active_sessions == 0


# --- the standalone token ---------------------------------------------------------------------------------------
def test_the_standalone_token_is_the_flag_then_the_setting_then_generated() -> None:
    with_env = replace(Settings(), api_token="from-the-environment")
    assert standalone_token("from-the-flag", with_env) == ("from-the-flag", "--token")
    assert standalone_token(None, with_env) == ("from-the-environment", "PARAKEET_API_TOKEN")
    generated, source = standalone_token(None, Settings())
    assert source is None and len(generated) >= 16 and generated != standalone_token(None, Settings())[0]


def test_accepted_connections_have_nagle_off() -> None:
    """Each message goes out at once: with Nagle on, a second small message waited ~18 ms for the client's ACK."""
    listener = listen_socket("127.0.0.1", 0)
    listener.setblocking(True)
    with listener, socket.create_connection(listener.getsockname()[:2]):
        accepted, _ = listener.accept()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
