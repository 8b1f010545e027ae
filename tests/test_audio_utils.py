"""The audio layer turns real files, base64 and real downloads into 16 kHz mono float32, or into typed errors.

Real files (tests/assets/audio, see ATTRIBUTION.md), real ffmpeg, a real HTTP server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from parakeet_worker.audio import (
    AudioLimits,
    DecodedAudio,
    decode_bytes,
    decode_file,
    fetch_url,
    load_audio_input,
    load_base64,
    pcm16_to_float32,
    resample,
)
from parakeet_worker.config import S3Credentials
from parakeet_worker.errors import (
    AudioDecodeError,
    AudioTooLargeError,
    AudioTooLongError,
    DownloadError,
    EmptyAudioError,
    InputError,
    UnsupportedFormatError,
    UrlNotAllowedError,
)
from parakeet_worker.transcript import SAMPLE_RATE_HZ

ASSETS = Path(__file__).parent / "assets" / "audio"
CLIP = "en_librispeech_2412-153948-0000"
REFERENCE = ASSETS / f"{CLIP}.16k_mono_s16.wav"
CLIP_S = 11.66
RAW_PCM = ASSETS / "raw_pcm_s16le_16k_no_header.raw"
LOCAL = AudioLimits(allow_private_urls=True, download_timeout_s=5.0)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    samples, rate = sf.read(REFERENCE, dtype="float32")  # read independently of the code under test
    assert rate == SAMPLE_RATE_HZ
    return samples


def _correlation(x: np.ndarray, ref: np.ndarray, max_lag: int = 800) -> float:
    """Normalised correlation at the best lag within +-max_lag samples (codecs may shift a little)."""
    n = 1 << (len(x) + len(ref)).bit_length()
    xc = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n)), n)
    lags = np.r_[0 : max_lag + 1, -max_lag:0]
    lag = int(lags[np.argmax(xc[lags])])
    a, b = (x[lag:], ref) if lag >= 0 else (x, ref[-lag:])
    m = min(len(a), len(b))
    a, b = a[:m].astype(np.float64), b[:m].astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _assert_mono_16k(audio: DecodedAudio, duration_s: float, tol_s: float = 0.06) -> None:
    assert audio.sample_rate == SAMPLE_RATE_HZ
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration_s == pytest.approx(duration_s, abs=tol_s)
    assert audio.duration_s == len(audio.samples) / SAMPLE_RATE_HZ


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


# --- Every format, rate and channel layout ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "container"),
    [
        ("16k_mono_s16.wav", "wav"),
        ("8k_mono_s16.wav", "wav"),
        ("8k_mono_mulaw.wav", "wav"),
        ("48k_stereo.flac", "flac"),
        ("44k1_stereo.mp3", "mp3"),
        ("mp3", "mp3"),
        ("m4a", "mp4"),
        ("ogg", "ogg"),
        ("opus", "ogg"),
        ("webm", "webm"),
    ],
)
def test_every_format_decodes_to_the_reference_clip(reference: np.ndarray, name: str, container: str) -> None:
    audio = decode_file(ASSETS / f"{CLIP}.{name}")
    _assert_mono_16k(audio, CLIP_S)
    assert audio.source_format == container
    assert _correlation(audio.samples, reference) > 0.98


@pytest.mark.parametrize("name", ["8k_mono_mulaw.wav", "webm"])
def test_decode_bytes_equals_decode_file(name: str) -> None:
    path = ASSETS / f"{CLIP}.{name}"
    np.testing.assert_array_equal(decode_bytes(path.read_bytes()).samples, decode_file(path).samples)


def test_44k1_float_wav_and_48k_stereo_wav(reference: np.ndarray, tmp_path: Path) -> None:
    # Made here from the copied files: the shared set's own copies are over 2 MB each.
    f32 = tmp_path / "f32.wav"
    _ffmpeg("-i", REFERENCE, "-ar", "44100", "-c:a", "pcm_f32le", f32)
    s16 = tmp_path / "s16.wav"
    _ffmpeg("-i", ASSETS / f"{CLIP}.48k_stereo.flac", "-c:a", "pcm_s16le", s16)
    for path, rate, channels in ((f32, 44100, 1), (s16, 48000, 2)):
        assert (sf.info(path).samplerate, sf.info(path).channels) == (rate, channels)
        audio = decode_file(path)
        _assert_mono_16k(audio, CLIP_S, tol_s=0.01)
        assert _correlation(audio.samples, reference) > 0.99


def test_real_22k05_clip_keeps_its_duration() -> None:
    _assert_mono_16k(decode_file(ASSETS / "en_ljspeech_LJ001-0002.wav"), 1.90, tol_s=0.01)


@pytest.mark.parametrize("channels", [2, 3])
def test_channels_are_averaged_via_libsndfile(reference: np.ndarray, tmp_path: Path, channels: int) -> None:
    t = np.arange(len(reference)) / SAMPLE_RATE_HZ
    columns = [reference, 0.5 * np.sin(2 * np.pi * 440 * t), -0.25 * reference][:channels]
    multi = np.stack(columns, axis=1).astype(np.float32)
    path = tmp_path / "multi.wav"
    sf.write(path, multi, SAMPLE_RATE_HZ, subtype="FLOAT")
    np.testing.assert_allclose(decode_file(path).samples, multi.mean(axis=1), atol=1e-6)


def test_channels_are_averaged_via_ffmpeg(reference: np.ndarray, tmp_path: Path) -> None:
    t = np.arange(len(reference)) / SAMPLE_RATE_HZ
    stereo = np.stack([reference, 0.5 * np.sin(2 * np.pi * 440 * t)], axis=1).astype(np.float32)
    wav, mka = tmp_path / "stereo.wav", tmp_path / "stereo.mka"
    sf.write(wav, stereo, SAMPLE_RATE_HZ, subtype="FLOAT")
    _ffmpeg("-i", wav, "-c:a", "pcm_f32le", mka)  # lossless PCM in Matroska: only ffmpeg reads it
    audio = decode_file(mka)
    assert audio.source_format == "webm"
    np.testing.assert_allclose(audio.samples, stereo.mean(axis=1), atol=1e-6)


# --- Damaged and odd files, one by one --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "duration_s", "source_format", "warning"),
    [
        ("silence_5s_16k.wav", 5.0, "wav", None),
        ("very_short_0.1s.wav", 0.1, "wav", None),
        ("mp3_content_named.wav", CLIP_S, "mp3", None),
        ("truncated_30pct.wav", 3.496, "wav", "declares 373120 bytes of audio data but the file holds 111881"),
        ("truncated_50pct.mp3", 5.80, "mp3", "filesize and duration do not match"),
        ("corrupt_middle.mp3", 11.13, "mp3", "Header missing"),
    ],
)
def test_valid_or_truncated_edge_files_decode_what_is_there(
    caplog: pytest.LogCaptureFixture, name: str, duration_s: float, source_format: str, warning: str | None
) -> None:
    with caplog.at_level(logging.WARNING, logger="parakeet_worker.audio"):
        audio = decode_file(ASSETS / name)
    _assert_mono_16k(audio, duration_s, tol_s=0.01)
    assert audio.source_format == source_format
    if name.startswith("silence"):
        assert not audio.samples.any()
    if warning is None:
        assert not caplog.records
    else:
        assert len(caplog.records) == 1 and "truncated or damaged" in caplog.text and warning in caplog.text


@pytest.mark.parametrize(
    ("name", "error", "phrases"),
    [
        ("zero_length.wav", EmptyAudioError, ["empty", "0 bytes"]),
        ("wav_header_zero_samples.wav", EmptyAudioError, ["wav audio contains no samples"]),
        ("truncated_after_header_claims_data.wav", EmptyAudioError, ["no samples", "declares 373120 bytes"]),
        ("truncated_inside_header_32bytes.wav", AudioDecodeError, ["wav data could not be decoded", "truncated"]),
        ("corrupt_random_after_magic.flac", AudioDecodeError, ["flac data could not be decoded", "corrupt"]),
        ("not_audio_png.wav", UnsupportedFormatError, ["not audio", "PNG image"]),
        ("not_audio_text.wav", UnsupportedFormatError, ["not audio", "text"]),
        ("raw_pcm_s16le_16k_no_header.raw", AudioDecodeError, ["not in a recognised audio format", "pcm_s16le"]),
    ],
)
def test_broken_edge_files_raise_a_typed_error_naming_the_problem(name: str, error: type, phrases: list[str]) -> None:
    with pytest.raises(error) as info:
        decode_file(ASSETS / name)
    for phrase in phrases:
        assert phrase in str(info.value)
    assert "/tmp" not in str(info.value)  # no temp paths leak into user-facing messages


def test_flac_cut_in_half_falls_back_to_ffmpeg_and_keeps_the_first_half(
    caplog: pytest.LogCaptureFixture, reference: np.ndarray, tmp_path: Path
) -> None:
    data = (ASSETS / f"{CLIP}.48k_stereo.flac").read_bytes()
    with caplog.at_level(logging.WARNING, logger="parakeet_worker.audio"):
        audio = decode_bytes(data[: len(data) // 2])
    assert 4.0 < audio.duration_s < 7.0
    assert _correlation(audio.samples, reference[: len(audio.samples)]) > 0.99
    assert "truncated or damaged" in caplog.text


def test_html_and_video_only_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFormatError, match="not audio: it looks like an HTML page"):
        decode_bytes(b"<!DOCTYPE html><html><body>Access denied</body></html>")
    video = tmp_path / "video.webm"
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:s=16x16:d=0.2", "-c:v", "libvpx", video)
    with pytest.raises(UnsupportedFormatError, match="contains no audio stream"):
        decode_file(video)


# --- Hints and raw PCM ------------------------------------------------------------------------------------------------
def test_raw_pcm_needs_the_hint_and_uses_the_given_rate() -> None:
    raw = RAW_PCM.read_bytes()
    audio = decode_bytes(raw, format_hint="pcm_s16le")
    _assert_mono_16k(audio, len(raw) / 2 / 16000, tol_s=1e-9)
    assert audio.source_format == "pcm_s16le"
    np.testing.assert_array_equal(audio.samples, np.frombuffer(raw, "<i2") / np.float32(32768))
    assert decode_file(RAW_PCM, format_hint="PCM_S16LE", sample_rate=8000).duration_s == pytest.approx(
        len(raw) / 2 / 8000, abs=1e-3
    )


def test_raw_pcm_errors_name_the_problem() -> None:
    with pytest.raises(AudioDecodeError, match="even number of bytes"):
        decode_bytes(b"\x00\x01\x02", format_hint="pcm_s16le")
    with pytest.raises(InputError, match="sample_rate for raw PCM"):
        decode_bytes(b"\x00\x01", format_hint="pcm_s16le", sample_rate=12)


def test_container_bytes_win_over_hints() -> None:
    wav = REFERENCE.read_bytes()
    assert decode_bytes(wav, format_hint="pcm_s16le").source_format == "wav"
    assert decode_bytes(wav, format_hint="mp3").duration_s == pytest.approx(CLIP_S)


# --- Limits -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["16k_mono_s16.wav", "mp3", "48k_stereo.flac"])
def test_too_long_audio_names_the_limit(name: str) -> None:
    with pytest.raises(AudioTooLongError, match=r"longer than the 5 s limit \(max_duration_s\)"):
        decode_file(ASSETS / f"{CLIP}.{name}", limits=AudioLimits(max_duration_s=5))


def test_too_long_raw_pcm() -> None:
    with pytest.raises(AudioTooLongError, match="max_duration_s"):
        decode_file(RAW_PCM, format_hint="pcm_s16le", limits=AudioLimits(max_duration_s=1))


def test_too_many_bytes() -> None:
    with pytest.raises(AudioTooLargeError, match="over the 1000 byte limit"):
        decode_bytes(REFERENCE.read_bytes(), limits=AudioLimits(max_bytes=1000))
    with pytest.raises(AudioTooLargeError, match="max_bytes"):
        decode_file(REFERENCE, limits=AudioLimits(max_bytes=1000))


def test_ffmpeg_decode_is_bounded_by_a_timeout() -> None:
    with pytest.raises(AudioDecodeError, match="decoding the mp3 audio took longer than 0.001 s"):
        decode_file(ASSETS / f"{CLIP}.mp3", limits=AudioLimits(decode_timeout_s=0.001))


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_duration_s must be > 0"):
        AudioLimits(max_duration_s=0)


# --- Sample helpers ---------------------------------------------------------------------------------------------------
def test_pcm16_to_float32() -> None:
    pcm = np.array([0, 16384, -32768, 32767], dtype="<i2").tobytes()
    np.testing.assert_array_equal(pcm16_to_float32(pcm), np.array([0, 0.5, -1, 32767 / 32768], dtype=np.float32))
    assert pcm16_to_float32(pcm).dtype == np.float32


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resample_keeps_duration_and_frequency(rate: int) -> None:
    tone = np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    out = resample(tone, rate, SAMPLE_RATE_HZ)
    assert out.dtype == np.float32 and len(out) == SAMPLE_RATE_HZ
    expected = np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE_HZ) / SAMPLE_RATE_HZ)
    np.testing.assert_allclose(out[200:-200], expected[200:-200], atol=1e-3)
    assert resample(tone, rate, rate) is tone


# --- Base64 -----------------------------------------------------------------------------------------------------------
SHORT_WAV = (ASSETS / "very_short_0.1s.wav").read_bytes()
SHORT_B64 = base64.b64encode(SHORT_WAV).decode()


@pytest.mark.parametrize(
    "text",
    [
        SHORT_B64,
        f"data:audio/wav;base64,{SHORT_B64}",
        "DATA:audio/x-wav;codecs=1;base64," + SHORT_B64,
        base64.encodebytes(SHORT_WAV).decode(),  # MIME line breaks
        base64.urlsafe_b64encode(SHORT_WAV).decode().rstrip("="),  # URL-safe alphabet, no padding
    ],
)
def test_base64_forms_decode(text: str) -> None:
    _assert_mono_16k(load_base64(text), 0.1, tol_s=1e-9)
    _assert_mono_16k(load_audio_input(text), 0.1, tol_s=1e-9)


@pytest.mark.parametrize(
    ("text", "error", "phrase"),
    [
        ("not base64 at all!", InputError, "not valid base64 (nor an http(s)/s3 URL): it contains the character '!'"),
        (SHORT_B64[:-4] + "é" + SHORT_B64[-3:], InputError, "it contains the character 'é'"),
        ("QUJDR", InputError, "not valid base64 (nor an http(s)/s3 URL): 5 characters cannot be base64"),
        (SHORT_B64 + "=A==", InputError, "not valid base64"),
        ("data:audio/wav," + SHORT_B64, InputError, "data URI is not base64-encoded"),
        ("data:audio/wav;base64", InputError, "no ','"),
        ("", EmptyAudioError, "0 bytes"),
    ],
)
def test_bad_base64_names_the_problem(text: str, error: type, phrase: str) -> None:
    with pytest.raises(error) as info:
        load_base64(text)
    assert phrase in str(info.value)


def test_base64_over_the_cap_is_refused_before_and_after_decoding() -> None:
    with pytest.raises(AudioTooLargeError, match="byte limit"):
        load_base64("A" * 100_000, limits=AudioLimits(max_bytes=1000))
    exactly_over = base64.b64encode(b"\0" * 1001).decode()
    with pytest.raises(AudioTooLargeError, match="1000 byte limit"):
        load_base64(exactly_over, limits=AudioLimits(max_bytes=1000))


def test_empty_input_is_an_input_error() -> None:
    with pytest.raises(InputError, match="audio input is empty"):
        load_audio_input("   ")


# --- Downloads from a real local HTTP server --------------------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        self.chunked_bytes_sent = 0

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients hang up on purpose (size caps, timeouts)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    MP3 = (ASSETS / f"{CLIP}.mp3").read_bytes()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.seen.append((self.path, dict(self.headers)))
        route = urlsplit(self.path).path
        if route in ("/audio.mp3", "/test-bucket/audio.mp3"):
            self._send(200, self.MP3, {"Content-Type": "audio/mpeg"})
        elif route == "/test-bucket/missing.mp3":
            body = b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code><Message>no</Message></Error>"
            self._send(404, body, {"Content-Type": "application/xml"})
        elif route == "/page.html":
            self._send(200, b"<!DOCTYPE html><html><body>Sign in</body></html>", {"Content-Type": "text/html"})
        elif route == "/big-length":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"\0" * 1000)
        elif route in ("/big-chunked", "/drip"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            drip = route == "/drip"
            for _ in range(100 if drip else 1000):
                if self.server.stop.wait(0.05 if drip else 0):
                    return
                data = b"\0" if drip else b"\0" * 65536
                self._chunk(data)
                self.server.chunked_bytes_sent += len(data)
            self._chunk(b"")
        elif route == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(self.MP3)))
            self.end_headers()
            self.wfile.flush()
            self.server.stop.wait(5)
        elif route == "/to-audio":
            self._send(302, headers={"Location": "/audio.mp3"})
        elif route == "/to-file":
            self._send(302, headers={"Location": "file:///etc/passwd"})
        elif route == "/to-gopher":
            self._send(301, headers={"Location": "gopher://127.0.0.1/"})
        elif route == "/loop":
            self._send(307, headers={"Location": "/loop"})
        else:
            self._send(404, b"not found")


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()


def _url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def test_download_and_decode_keeps_presigned_query_and_cleans_up(server: _Server, tmp_path: Path) -> None:
    query = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=ab%2Fcd%3D&X-Amz-Expires=60"
    audio = load_audio_input(_url(server, f"/audio.mp3?{query}"), limits=LOCAL, work_dir=tmp_path)
    _assert_mono_16k(audio, CLIP_S)
    assert audio.source_format == "mp3"
    assert server.seen[-1][0] == f"/audio.mp3?{query}"  # byte-for-byte, so signatures stay valid
    assert list(tmp_path.iterdir()) == []


def test_fetch_url_writes_the_body_into_dest_dir(server: _Server, tmp_path: Path) -> None:
    path = fetch_url(_url(server, "/to-audio"), tmp_path, limits=LOCAL)  # a relative redirect is followed
    assert path.parent == tmp_path and path.read_bytes() == _Handler.MP3


def test_http_404_is_a_download_error_with_the_status(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="download failed with HTTP 404") as info:
        load_audio_input(_url(server, "/nothing.wav?X-Amz-Signature=SECRET"), limits=LOCAL, work_dir=tmp_path)
    assert info.value.status == 404
    assert "SECRET" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("route", ["/big-length", "/big-chunked"])
def test_oversized_download_is_aborted(server: _Server, tmp_path: Path, route: str) -> None:
    server.chunked_bytes_sent = 0
    with pytest.raises(AudioTooLargeError, match="over the 100000 byte limit"):
        fetch_url(_url(server, route), tmp_path, limits=replace(LOCAL, max_bytes=100_000))
    assert list(tmp_path.iterdir()) == []
    assert server.chunked_bytes_sent < 16 << 20  # the client hung up long before the 64 MB body ended


@pytest.mark.parametrize("route", ["/slow", "/drip"])
def test_slow_server_times_out(server: _Server, tmp_path: Path, route: str) -> None:
    with pytest.raises(DownloadError, match=r"timed out after 0.4 s \(download_timeout_s\)"):
        fetch_url(_url(server, route), tmp_path, limits=replace(LOCAL, download_timeout_s=0.4))
    assert list(tmp_path.iterdir()) == []


def test_html_page_instead_of_audio(server: _Server) -> None:
    with pytest.raises(UnsupportedFormatError, match="HTML page"):
        load_audio_input(_url(server, "/page.html"), limits=LOCAL)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "[::1]", "10.1.2.3", "192.168.0.1", "169.254.169.254", "0.0.0.0", "100.64.0.1"]
)
def test_private_addresses_are_refused_before_connecting(server: _Server, tmp_path: Path, host: str) -> None:
    before = len(server.seen)
    port = server.server_address[1]
    with pytest.raises(UrlNotAllowedError, match="not a public address .* set allow_private_urls"):
        fetch_url(f"http://{host}:{port}/audio.mp3", tmp_path, limits=replace(LOCAL, allow_private_urls=False))
    assert len(server.seen) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.wav", "gopher://example.com/", "file:x"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowedError, match="is not allowed; use http, https or s3"):
        load_audio_input(url, limits=LOCAL)


@pytest.mark.parametrize(("route", "scheme"), [("/to-file", "file"), ("/to-gopher", "gopher")])
def test_redirect_to_a_refused_url_is_refused(server: _Server, tmp_path: Path, route: str, scheme: str) -> None:
    with pytest.raises(UrlNotAllowedError, match=f"scheme '{scheme}' is not allowed"):
        fetch_url(_url(server, route), tmp_path, limits=LOCAL)
    assert list(tmp_path.iterdir()) == []


def test_redirect_loop_stops(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="stopped after 5 redirects"):
        fetch_url(_url(server, "/loop"), tmp_path, limits=LOCAL)


def test_malformed_urls_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="malformed"):
        fetch_url("http://127.0.0.1:99999/a.wav", tmp_path, limits=LOCAL)
    with pytest.raises(InputError, match="contains spaces or control characters; percent-encode them"):
        fetch_url("http://127.0.0.1:1/a b.wav", tmp_path, limits=LOCAL)
    assert list(tmp_path.iterdir()) == []


def test_https_certificate_is_verified(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-subj", "/CN=localhost", "-days", "1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv = _Server()
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    try:
        with pytest.raises(DownloadError, match="TLS error .* CERTIFICATE_VERIFY_FAILED"):
            fetch_url(f"https://localhost:{srv.server_address[1]}/audio.mp3", downloads, limits=LOCAL)
    finally:
        srv.shutdown()
        srv.server_close()
    assert srv.seen == [] and list(downloads.iterdir()) == []


def test_connection_refused_is_a_download_error(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DownloadError, match="failed"):
            fetch_url(f"http://127.0.0.1:{port}/a.wav", tmp_path, limits=LOCAL)


# --- S3 (boto3 against the same local server as an S3-compatible endpoint) --------------------------------------------
def _s3(server: _Server) -> S3Credentials:
    return S3Credentials(access_key="test-key", secret_key="test-secret", endpoint_url=_url(server, ""))


def test_s3_download_is_signed_and_decodes(server: _Server, tmp_path: Path) -> None:
    audio = load_audio_input("s3://test-bucket/audio.mp3", limits=LOCAL, s3=_s3(server), work_dir=tmp_path)
    _assert_mono_16k(audio, CLIP_S)
    path, headers = server.seen[-1]
    assert urlsplit(path).path == "/test-bucket/audio.mp3"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=test-key/")
    assert list(tmp_path.iterdir()) == []


def test_s3_missing_key_reports_the_status(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"s3://test-bucket/missing.mp3 failed with HTTP 404 \(NoSuchKey\)") as info:
        fetch_url("s3://test-bucket/missing.mp3", tmp_path, limits=LOCAL, s3=_s3(server))
    assert info.value.status == 404
    assert list(tmp_path.iterdir()) == []


def test_s3_without_credentials_names_the_settings(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="set S3_ACCESS_KEY and S3_SECRET_KEY"):
        fetch_url("s3://bucket/key.wav", tmp_path)
    with pytest.raises(InputError, match="s3://bucket/key"):
        fetch_url("s3://bucket-only", tmp_path, s3=S3Credentials("a", "b"))


def test_s3_credentials_from_env() -> None:
    assert S3Credentials.from_env({}) is None
    creds = S3Credentials.from_env(
        {"S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk", "S3_ENDPOINT": "https://s3.example", "S3_REGION": "eu-west-1"}
    )
    assert creds == S3Credentials("ak", "sk", "https://s3.example", "eu-west-1")
    assert "sk" not in repr(creds)
    with pytest.raises(ValueError, match="S3_SECRET_KEY is not set"):
        S3Credentials.from_env({"S3_ACCESS_KEY": "ak"})
