"""The audio layer against hostile input: decompression bombs, absurd headers, playlists behind ID3 tags, servers
that lie about or dribble their bodies, IPv6 forms that hide IPv4 addresses, and secrets in URLs.

Real files made with real ffmpeg, real sockets on 127.0.0.1, and the memory-heavy decodes in a child process under
an address-space limit (RLIMIT_AS), so a regression fails the test instead of exhausting the machine.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from parakeet_worker.audio import AudioLimits, decode_bytes, decode_file, fetch_url, load_audio_input, redact_url
from parakeet_worker.audio.fetch import _Watchdog, is_public_address
from parakeet_worker.errors import (
    AudioDecodeError,
    AudioTooLongError,
    DownloadError,
    InputError,
    UnsupportedFormatError,
    UrlNotAllowedError,
)
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)
ASSETS = Path(__file__).parent / "assets" / "audio"
CLIP = ASSETS / "en_librispeech_2412-153948-0000.16k_mono_s16.wav"
CLIP_MP3 = ASSETS / "en_librispeech_2412-153948-0000.mp3"
ROOT = Path(__file__).parent.parent
# Decompression bombs (item 1): FLAC's constant subframes store hours of silence in kilobytes (ATTRIBUTION.md).
SILENCE_4H_FLAC = ASSETS / "silence_4h_8k.flac"  # 32 KB, the length in its header
SILENCE_2H_MKA = ASSETS / "silence_2h_8k.mka"  # 48 KB, only ffmpeg reads it, the duration in its header
SILENCE_20MIN_UNSTATED = ASSETS / "silence_20min_8k_no_duration.mka"  # 6 KB, written live: no length anywhere
LOCAL = AudioLimits(allow_private_urls=True, download_timeout_s=5.0)
PUBLIC_ONLY = replace(LOCAL, allow_private_urls=False)


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


def _wav(rate: int, channels: int, data: bytes, *, float32: bool = False) -> bytes:
    """A WAV file with whatever header a hostile client writes."""
    width = 4 if float32 else 2
    fmt = struct.pack("<HHIIHH", 3 if float32 else 1, channels, rate, rate * channels * width, channels * width,
                      8 * width)  # fmt: skip
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --- Item 1: decompression bombs are refused with bounded memory -----------------------------------------------------
_CHILD = """
import json, resource, sys, time
from parakeet_worker.audio import AudioLimits, decode_file

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

path, max_s, budget = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
base = status("VmRSS:")
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize:") + budget, resource.RLIM_INFINITY))
started = time.monotonic()
try:
    audio = decode_file(path, limits=AudioLimits(max_duration_s=max_s))
    outcome = f"decoded {audio.duration_s:.0f} s"
except BaseException as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(json.dumps({"outcome": outcome, "rss_growth_mb": (status("VmHWM:") - base) / 2**20,
                  "seconds": time.monotonic() - started}))
"""
_BUDGET_BYTES = 512 << 20


@dataclass(frozen=True)
class _ChildDecode:
    outcome: str  # "decoded N s" or "ErrorClass: message"
    rss_growth_mb: float  # peak RSS during the decode, over the RSS before it
    seconds: float


def _decode_in_child(path: Path, max_duration_s: float) -> _ChildDecode:
    """Decode in a child limited to 512 MB more address space; its outcome and peak RSS growth."""
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(max_duration_s), str(_BUDGET_BYTES)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = _ChildDecode(**json.loads(proc.stdout.strip().splitlines()[-1]))
    logger.info("decoding %s under a %g s limit: %s", path.name, max_duration_s, result)
    return result


def test_hours_of_flac_silence_are_refused_before_decoding() -> None:
    assert SILENCE_4H_FLAC.stat().st_size < 64 << 10
    result = _decode_in_child(SILENCE_4H_FLAC, max_duration_s=3 * 3600 + 60)  # the default limit: 695 MB at 16 kHz
    assert result.outcome.startswith("AudioTooLongError"), result
    assert "header declares 14400 s" in result.outcome
    assert result.rss_growth_mb < 64, result  # nothing decoded, let alone 3 hours
    assert result.seconds < 5, result


def test_hours_of_silence_through_ffmpeg_are_refused_by_their_stated_duration() -> None:
    result = _decode_in_child(SILENCE_2H_MKA, max_duration_s=600)
    assert result.outcome.startswith("AudioTooLongError"), result
    assert "header declares 7200 s" in result.outcome
    assert result.rss_growth_mb < 64, result
    assert result.seconds < 5, result


def test_silence_with_no_stated_length_stops_at_the_limit() -> None:
    result = _decode_in_child(SILENCE_20MIN_UNSTATED, max_duration_s=600)  # 600 s at 16 kHz float32: 38 MB
    assert result.outcome.startswith("AudioTooLongError"), result
    assert "header declares" not in result.outcome  # found by counting samples
    assert result.rss_growth_mb < 38 + 64, result  # at most the limit's worth, plus blocks and buffers


def test_a_refused_input_does_not_keep_its_decoded_audio() -> None:
    long_file = SILENCE_20MIN_UNSTATED
    limits = AudioLimits(max_duration_s=600)  # 38 MB decoded before the limit is passed
    kept: list[BaseException] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        try:
            decode_file(long_file, limits=limits)
        except AudioTooLongError as exc:
            kept.append(exc)  # as a job keeps the error of each refused input until it ends
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 1
    assert held < 2 << 20, f"the kept error holds {held / 2**20:.1f} MB"


def test_a_1_hz_wav_is_refused_not_decoded_into_hours() -> None:
    tiny = _wav(1, 1, np.zeros(4000, "<i2").tobytes())  # 8 kB declaring 4000 s of audio
    with pytest.raises(AudioDecodeError, match="sample rate of 1 Hz; audio must be 1000 to 384000 Hz"):
        decode_bytes(tiny)


def test_absurd_channel_counts_are_refused() -> None:
    wide = _wav(16000, 1000, np.zeros(1000 * 160, "<i2").tobytes())
    with pytest.raises(UnsupportedFormatError, match="declares 1000 channels; at most 64"):
        decode_bytes(wide)


@pytest.mark.parametrize(("value", "phrase"), [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite"),
                                               (1e30, "values up to 1e\\+30, far outside")])  # fmt: skip
def test_non_finite_or_huge_float_samples_are_refused(value: float, phrase: str) -> None:
    samples = np.zeros(SAMPLE_RATE_HZ, np.float32)
    samples[100] = value
    with pytest.raises(AudioDecodeError, match=phrase):
        decode_bytes(_wav(SAMPLE_RATE_HZ, 1, samples.astype("<f4").tobytes(), float32=True))


def test_float_audio_stored_at_integer_scale_is_scaled_back() -> None:
    speech, _ = sf.read(CLIP, dtype="float32")
    audio = decode_bytes(_wav(SAMPLE_RATE_HZ, 1, (speech * 32768).astype("<f4").tobytes(), float32=True))
    peak = float(np.max(np.abs(audio.samples)))
    assert peak == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(audio.samples, speech / np.max(np.abs(speech)), atol=1e-5)


# --- Item 6: ffmpeg demuxes only the container that was sniffed ----------------------------------------------------
def _behind_id3(text: str) -> bytes:
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 0, 16]) + b"\0" * 16  # a valid empty ID3v2.4 tag: sniffed as MP3
    return tag + text.encode()


@pytest.mark.parametrize("kind", ["hls", "ffconcat"])
def test_a_playlist_behind_an_id3_tag_does_not_open_local_files(kind: str) -> None:
    if kind == "hls":
        text = f"#EXTM3U\n#EXT-X-TARGETDURATION:20\n#EXTINF:12,\n{CLIP_MP3}\n#EXT-X-ENDLIST\n"
    else:
        text = f"ffconcat version 1.0\nfile '{CLIP_MP3}'\n"
    with pytest.raises(AudioDecodeError, match="the mp3 data could not be decoded") as info:
        decode_bytes(_behind_id3(text))  # before the fix: the 11.7 s clip the playlist names, transcribed
    assert str(CLIP_MP3) not in str(info.value)


@pytest.mark.socket
def test_a_playlist_behind_an_id3_tag_does_not_fetch_urls() -> None:
    with _RawServer(lambda conn, _: conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")) as srv:
        text = f"#EXTM3U\n#EXT-X-TARGETDURATION:20\n#EXTINF:12,\n{srv.url('/segment.mp3')}\n#EXT-X-ENDLIST\n"
        with pytest.raises(AudioDecodeError):
            decode_bytes(_behind_id3(text))
        assert srv.connections == 0


# --- Item 5: downloads that lie about their length or dribble ------------------------------------------------------
class _RawServer:
    """A TCP server on 127.0.0.1 answering every connection with ``respond(conn, request)`` in a thread."""

    def __init__(self, respond: Callable[[socket.socket, bytes], None]) -> None:
        self.respond = respond
        self.connections = 0
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> _RawServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}{path}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                self.respond(conn, conn.recv(65536))
            except OSError:
                pass  # the client hung up (on purpose, in most tests)


@pytest.fixture
def mp3() -> bytes:
    return CLIP_MP3.read_bytes()


@pytest.mark.socket
def test_a_body_shorter_than_its_content_length_is_refused(tmp_path: Path, mp3: bytes) -> None:
    def respond(conn: socket.socket, request: bytes) -> None:
        conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(mp3)}\r\n\r\n".encode() + mp3[: len(mp3) // 2])

    with _RawServer(respond) as srv, pytest.raises(DownloadError, match="cut short") as info:
        load_audio_input(srv.url("/a.mp3"), limits=LOCAL, work_dir=tmp_path)
    assert f"{len(mp3) // 2} of the {len(mp3)} bytes its Content-Length declares" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.socket
def test_a_chunked_body_cut_inside_a_chunk_is_refused(tmp_path: Path, mp3: bytes) -> None:
    def respond(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + f"{len(mp3):x}\r\n".encode()
                     + mp3[:1000])  # fmt: skip

    with _RawServer(respond) as srv, pytest.raises(DownloadError, match="cut short: the connection closed inside"):
        fetch_url(srv.url("/a.mp3"), tmp_path, limits=LOCAL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.socket
@pytest.mark.parametrize("where", ["headers", "status line"])
def test_the_deadline_covers_dribbled_response_headers(tmp_path: Path, where: str) -> None:
    def respond(conn: socket.socket, request: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\n" if where == "headers" else b""
        conn.sendall(head)
        for _ in range(200):  # a byte every 50 ms for 10 s: each read succeeds, the request never ends
            time.sleep(0.05)
            conn.sendall(b"X-Slow: a\r\n"[:1] if where == "headers" else b"H")

    with _RawServer(respond) as srv:
        started = time.monotonic()
        with pytest.raises(DownloadError, match=r"timed out after 1 s \(download_timeout_s\)"):
            fetch_url(srv.url("/a.mp3"), tmp_path, limits=replace(LOCAL, download_timeout_s=1.0))
        elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"the download held on for {elapsed:.1f} s under a 1 s deadline"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.socket
def test_the_deadline_covers_a_body_without_length_cut_at_the_deadline(tmp_path: Path) -> None:
    def respond(conn: socket.socket, request: bytes) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")  # no length: the body ends when it closes
        for _ in range(200):
            time.sleep(0.05)
            conn.sendall(b"\0")

    with _RawServer(respond) as srv, pytest.raises(DownloadError, match="timed out after 1 s"):
        fetch_url(srv.url("/a.mp3"), tmp_path, limits=replace(LOCAL, download_timeout_s=1.0))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.socket
def test_a_deadline_after_the_request_closed_its_socket_cuts_nothing_else() -> None:
    """The deadline's timer can fire after the request closed its descriptor (a failed TLS handshake closes it, and
    so does the request's own end, both just before the watchdog is disarmed), when that descriptor number may
    already be another connection's. The watchdog cuts only the connection it was armed for."""
    request, server_side = socket.socketpair()
    number = request.fileno()
    watchdog = _Watchdog(number, 0.2)
    request.close()
    other, other_peer = socket.socketpair()  # another connection takes the freed descriptor number over
    if other.fileno() != number:  # the lowest free number usually is that one; make sure
        os.dup2(other.fileno(), number)
        other.close()
        other = socket.socket(fileno=number)
    try:
        time.sleep(0.5)
        assert watchdog.fired
        other_peer.sendall(b"ping")
        assert other.recv(4) == b"ping", "the deadline cut a connection that was not its own"
        server_side.settimeout(2.0)
        assert server_side.recv(1) == b"", "the request's own connection was not cut"
    finally:
        watchdog.disarm()
        for sock in (other, other_peer, server_side):
            sock.close()


# --- Item 7: IPv6 forms that carry an IPv4 address are judged by it -------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "64:ff9b::7f00:1",  # NAT64 well-known prefix -> 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 -> 169.254.169.254 (cloud metadata)
        "2002:7f00:1::1",  # 6to4 -> 127.0.0.1
        "2002:a00:1::",  # 6to4 -> 10.0.0.1
        "::7f00:1",  # IPv4-compatible -> 127.0.0.1
        "::ffff:7f00:1",  # IPv4-mapped -> 127.0.0.1
        "::ffff:0:a00:1",  # IPv4-translated (SIIT) -> 10.0.0.1
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo: refused on doubt
        "64:ff9b:1::a00:1",  # local-use NAT64: refused on doubt
        "fec0::1",  # site-local (Python 3.11 calls it global)
        "100::1",  # discard-only
    ],
)
def test_ipv6_forms_hiding_private_ipv4_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(UrlNotAllowedError, match="not a public address"):
        fetch_url(f"http://[{host}]:9/a.wav", tmp_path, limits=PUBLIC_ONLY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("address", "public"),
    [("64:ff9b::808:808", True), ("2002:808:808::1", True), ("::ffff:808:808", True), ("2606:4700::1111", True),
     ("8.8.8.8", True), ("64:ff9b::c0a8:1", False), ("2001:db8::1", False), ("fe80::1", False), ("ff02::1", False),
     ("::", False), ("::1", False), ("100.64.0.1", False), ("224.0.0.1", False)],
)  # fmt: skip
def test_the_embedded_ipv4_address_decides(address: str, public: bool) -> None:
    import ipaddress

    assert is_public_address(ipaddress.ip_address(address)) is public


# --- Item 9: malformed URLs are typed errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("http://[::1/x", "not a valid IPv6 address"),
        ("http://[::1/x?X-Amz-Signature=SECRETSIG", "not a valid IPv6 address"),
        ("http://[not-an-address]/a.wav", "not a valid IPv6 address"),
        ("https://host.test:99999/a.wav", "port is not a number"),
        ("https://host.test:s3cr3t/a.wav", "port is not a number"),
    ],
)
def test_malformed_urls_are_input_errors_that_quote_nothing(tmp_path: Path, url: str, phrase: str) -> None:
    for call in (lambda: fetch_url(url, tmp_path, limits=LOCAL), lambda: load_audio_input(url, limits=LOCAL)):
        with pytest.raises(InputError, match=phrase) as info:
            call()
        assert "SECRETSIG" not in str(info.value) and "s3cr3t" not in str(info.value)


# --- Item 8: secrets in URLs never reach an error or a log line -------------------------------------------------------
SECRETS = ("hunter2", "SECRETSIG", "tok-123")


@pytest.mark.socket
def test_credentials_and_signatures_never_appear_in_errors_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def respond(conn: socket.socket, request: bytes) -> None:
        if request.startswith(b"GET /a.wav"):  # a redirect whose target carries a token, then a refusal
            conn.sendall(b"HTTP/1.1 302 Found\r\nLocation: /b.wav?token=tok-123\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    with _RawServer(respond) as srv, caplog.at_level(logging.DEBUG):
        port = srv.sock.getsockname()[1]
        attempts: list[tuple[str, AudioLimits]] = [
            (f"http://user:hunter2@127.0.0.1:{port}/a.wav?X-Amz-Signature=SECRETSIG#tok-123", LOCAL),
            (f"http://user:hunter2@127.0.0.1:{port}/a.wav?X-Amz-Signature=SECRETSIG", PUBLIC_ONLY),
            ("http://user:hunter2@[::1/a.wav?X-Amz-Signature=SECRETSIG", LOCAL),
            ("s3://AKIAUSER:hunter2@bucket/key.wav?versionId=SECRETSIG", LOCAL),
            ("http://user:hunter2@no-such-host.invalid/a.wav?token=tok-123", LOCAL),
        ]
        messages = []
        for url, limits in attempts:
            with pytest.raises((DownloadError, UrlNotAllowedError, InputError)) as info:
                load_audio_input(url, limits=limits, work_dir=tmp_path)
            messages.append(str(info.value))
    text = "\n".join(messages) + "\n" + caplog.text
    for secret in SECRETS:
        assert secret not in text, text
    assert "127.0.0.1" in text  # the messages still say where


def test_redact_url_keeps_where_and_drops_secrets() -> None:
    url = "https://AKIA:hunter2@bucket.s3.amazonaws.com:8443/dir/a.wav?X-Amz-Signature=SECRETSIG#tok-123"
    assert redact_url(url) == "https://bucket.s3.amazonaws.com:8443/dir/a.wav"
    assert redact_url("http://[::1/x?token=tok-123") == "(a malformed URL)"
    assert redact_url("http://[2001:db8::1]/a.wav") == "http://[2001:db8::1]/a.wav"
