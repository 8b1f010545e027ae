"""The browser page (docs/BROWSER.md): live captions from the microphone and file transcription, served at ``GET /``.

A plain ``GET /`` answers the page (``web/index.html``); the WebSocket at ``/`` stays the native protocol's
(:mod:`~parakeet_worker.serving.native_face`: a WebSocket route only matches upgrades, this one only plain
requests). The page's script, style and AudioWorklet module are ``GET /static/<name>``, a fixed list of files
shipped in the package (read once at import; nothing else under the folder is served). The page speaks the native
protocol for live audio and ``POST /v1/audio/transcriptions`` for files; no build step, no third-party resources.

``GET /page/access`` is the page's probe, since a browser's WebSocket cannot read why a handshake was refused: it
runs the native handshake's checks (:func:`~parakeet_worker.serving.native_face.check_handshake`: shutting down,
address back-off, token, a single-use token already used) plus the session limit, without opening a session,
and answers ``200 {"status": "ok", "ready", "sessions", "max_sessions", "model"}`` or the refusal the handshake
would get (401/409/429/503 with ``{"error": ...}``). A wrong token counts toward the address's back-off as a
refused handshake does, so the probe is no free token oracle.

Every answer carries ``Cache-Control: no-cache`` with an ``ETag`` (a changed worker never serves a stale script;
an unchanged one answers 304), ``X-Content-Type-Options: nosniff`` and, on the page, a Content-Security-Policy
that allows only this origin (the page loads nothing from elsewhere and may not be framed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from parakeet_worker.serving.faces import FaceContext
from parakeet_worker.serving.native_face import check_handshake
from parakeet_worker.serving.ws_grants import grant_book

WEB_DIR = Path(__file__).resolve().with_name("web")
PAGE_FILE = "index.html"
# The files under /static/ and their content types (the AudioWorklet module must be JavaScript to be loaded).
STATIC_TYPES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "pcm-worklet.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_TYPE = "text/html; charset=utf-8"
PAGE_POLICY = ("default-src 'self'; connect-src 'self' blob:; img-src 'self' data:; "
               "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
COMMON_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load(name: str, content_type: str) -> Asset:
    path = WEB_DIR / name
    try:
        body = path.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path} is missing: the package was installed without its web files; install it "
                                "from the repository (the Dockerfile copies parakeet_worker/serving/web/)") from exc
    return Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:20]}"')


# Read once at import (not on the event loop): a few tens of kilobytes.
PAGE = _load(PAGE_FILE, PAGE_TYPE)
STATIC: dict[str, Asset] = {name: _load(name, kind) for name, kind in STATIC_TYPES.items()}


def _answer(request: Request, asset: Asset, extra: dict[str, str] | None = None) -> Response:
    headers = {**COMMON_HEADERS, "ETag": asset.etag, **(extra or {})}
    if asset.etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, headers={**headers, "Content-Type": asset.content_type})


def routes(ctx: FaceContext) -> list[BaseRoute]:
    """``GET /`` (the page), ``GET /static/{name}`` (its files) and ``GET /page/access`` (the probe)."""
    grants = grant_book(ctx.sessions, "page")
    model = ctx.engine.info().model

    async def page(request: Request) -> Response:
        return _answer(request, PAGE, {"Content-Security-Policy": PAGE_POLICY, "Referrer-Policy": "no-referrer",
                                       "Permissions-Policy": "microphone=(self)"})

    async def static(request: Request) -> Response:
        asset = STATIC.get(request.path_params["name"])
        if asset is None:
            return JSONResponse({"error": "no such file; the page's files are " + ", ".join(sorted(STATIC))},
                                status_code=404, headers=COMMON_HEADERS)
        return _answer(request, asset)

    async def access(request: Request) -> Response:
        no_store = {"Cache-Control": "no-store"}
        refusal = check_handshake(ctx, grants, request)
        if isinstance(refusal, JSONResponse):
            refusal.headers.update(no_store)
            return refusal
        sessions, limit = grants.active_sessions, ctx.limits.max_sessions
        if sessions >= limit:
            return JSONResponse({"error": f"server is busy ({limit} sessions); retry later"}, status_code=503,
                                headers=no_store)
        return JSONResponse({"status": "ok", "ready": ctx.ready(), "sessions": sessions, "max_sessions": limit,
                             "model": model}, headers=no_store)

    return [
        Route("/", page, methods=["GET"], name="page"),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/page/access", access, methods=["GET"]),
    ]


__all__ = ["PAGE", "STATIC", "STATIC_TYPES", "WEB_DIR", "routes"]
