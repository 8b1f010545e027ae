"""Turn audio inputs (bytes, files, base64, http(s)/s3 URLs) into float32 mono 16 kHz samples.

This is the only module that touches codecs, files and the network; everything downstream takes arrays.

Decoding
    The container is detected from the first bytes, never from a file name or a caller's hint. WAV, FLAC,
    Ogg (Vorbis/Opus), AIFF, AU and CAF are read with libsndfile (``soundfile``); MP3, AAC, MP4/M4A, WebM/Matroska,
    AMR and ASF/WMA, and anything libsndfile fails on, go through ``ffmpeg`` (a subprocess reading a file path,
    bounded by ``AudioLimits.decode_timeout_s``). Channels are averaged to mono and the rate is converted to 16 kHz
    with soxr, block by block, so memory stays bounded and decoding stops as soon as the duration limit is passed.
    The duration is counted from decoded samples, never taken from headers.

Damaged input, one rule
    A truncated or partly corrupt file that still yields samples decodes to the samples present and logs a
    warning (the header said more than could be decoded, or ffmpeg reported errors). Input that yields no samples
    raises :class:`EmptyAudioError`; bytes no decoder can read raise :class:`AudioDecodeError`; recognisable
    non-audio (images, text, HTML, archives) raises :class:`UnsupportedFormatError` saying it is not audio.

Hints
    ``format_hint`` matters for one thing only: headerless PCM. Raw PCM is accepted only with
    ``format_hint="pcm_s16le"`` (16-bit little-endian mono, ``sample_rate`` default 16000); a recognisable
    container still wins over the hint. Other hints ("wav", "mp3", ...) are advisory and never override what the
    bytes say.

Downloads
    Only http, https and s3 URLs are fetched. For http(s) every address the host resolves to must be public
    (no loopback, private, link-local, shared, reserved, multicast or unspecified address) unless
    ``AudioLimits.allow_private_urls`` is set; the connection goes to the address that was checked (no second
    DNS lookup), and every redirect hop is checked again. Environment proxies are not used. Bodies are streamed
    to a temp file with the byte cap enforced while downloading and one deadline for the whole download.
    ``s3://bucket/key`` uses boto3 with :class:`S3Credentials` (read from the environment by
    :meth:`S3Credentials.from_env`); the S3 endpoint is operator configuration and is not address-checked.

All functions are synchronous and may block (subprocess, network): run them in a worker thread from async code.
Temp files are removed on success and on error.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import logging
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO
from urllib.parse import SplitResult, urljoin, urlsplit

import numpy as np
import soundfile as sf
import soxr

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

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
"""Rate of every array this module returns, in Hz."""

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB
DEFAULT_MAX_DURATION_S = 3 * 3600 + 60  # the model card's 3 hours with local attention, plus a margin
DEFAULT_DOWNLOAD_TIMEOUT_S = 60.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_DECODE_TIMEOUT_S = 600.0

RAW_PCM_FORMATS = frozenset({"pcm_s16le", "s16le"})
"""``format_hint`` values that mean headerless 16-bit little-endian mono PCM."""

MAX_REDIRECTS = 5
_HEAD_BYTES = 4096
_DOWNLOAD_CHUNK_BYTES = 1 << 16
_DECODE_BLOCK_S = 4
_FFMPEG_LOG_TAIL_BYTES = 1 << 16
_MIN_RAW_SAMPLE_RATE_HZ = 1000
_MAX_RAW_SAMPLE_RATE_HZ = 384_000
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "parakeet-worker-audio/1"


# --- Public types ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioLimits:
    """Byte, duration and time limits for loading one input. Override with ``dataclasses.replace``."""

    max_bytes: int = DEFAULT_MAX_BYTES
    """Largest payload accepted: decoded base64, download body or file size."""
    max_duration_s: float = DEFAULT_MAX_DURATION_S
    """Longest decoded audio accepted; decoding stops as soon as it is passed."""
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S
    """Deadline for a whole download (connect, redirects and body)."""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    """Deadline for opening one connection (never beyond ``download_timeout_s``)."""
    decode_timeout_s: float = DEFAULT_DECODE_TIMEOUT_S
    """Deadline for one ffmpeg decode."""
    allow_private_urls: bool = False
    """Allow URLs whose host is loopback, private, link-local or otherwise non-public (tests, private clusters)."""

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_duration_s", "download_timeout_s", "connect_timeout_s", "decode_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"AudioLimits.{name} must be > 0, got {getattr(self, name)!r}")


DEFAULT_LIMITS = AudioLimits()


@dataclass(frozen=True, eq=False)
class DecodedAudio:
    """Float32 mono samples at :data:`SAMPLE_RATE` and the container they were decoded from."""

    samples: np.ndarray
    sample_rate: int
    source_format: str
    """Detected container ("wav", "flac", "ogg", "mp3", "mp4", "webm", ...) or "pcm_s16le" for raw input."""

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate


# --- Sample helpers -----------------------------------------------------------------------------------------------
def pcm16_to_float32(buf: bytes) -> np.ndarray:
    """Convert 16-bit little-endian PCM bytes to float32 samples in [-1, 1)."""
    if len(buf) % 2:
        raise AudioDecodeError(f"16-bit PCM needs an even number of bytes, got {len(buf)}")
    return np.frombuffer(buf, dtype="<i2").astype(np.float32) / np.float32(32768.0)


def resample(x: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a 1-D signal with soxr (high quality). Returns float32; a copy-free cast when the rates match.

    For a stream cut into chunks use one ``soxr.ResampleStream`` instead, so chunk edges leave no artifacts.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D array, got shape {x.shape}")
    if from_rate == to_rate or x.size == 0:
        return x
    return np.asarray(soxr.resample(x, from_rate, to_rate, quality="HQ"), dtype=np.float32)


# --- Decoding -------------------------------------------------------------------------------------------------------
def decode_bytes(
    data: bytes,
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode an in-memory audio file (any supported container) or, with a raw hint, headerless PCM."""
    return _decode(data, format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=None)


def decode_file(
    path: str | os.PathLike[str],
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode an audio file on disk. The name's extension is ignored; the bytes decide."""
    return _decode(Path(path), format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=None)


def load_base64(
    text: str,
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode base64 audio, plain or as a data URI (``data:audio/wav;base64,...``)."""
    return decode_bytes(_base64_payload(text, limits), format_hint=format_hint, sample_rate=sample_rate, limits=limits)


def load_audio_input(
    source: str,
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
    s3: S3Credentials | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> DecodedAudio:
    """Decode one job input: an http(s) or s3 URL, a data URI, or plain base64.

    Downloads and decoder temp files live in a temp folder under ``work_dir`` (default: the system temp dir)
    that is removed before this returns or raises.
    """
    if not isinstance(source, str) or not source.strip():
        raise InputError("the audio input is empty; pass an http(s) or s3 URL, or base64-encoded audio")
    text = source.strip()
    with tempfile.TemporaryDirectory(prefix="audio-", dir=work_dir) as tmp:
        if _SCHEME_RE.match(text) and not text[:5].lower() == "data:":
            path = fetch_url(text, tmp, limits=limits, s3=s3)
            return _decode(path, format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=tmp)
        payload = _base64_payload(text, limits)
        return _decode(payload, format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=tmp)


def _decode(
    source: bytes | Path,
    *,
    format_hint: str | None,
    sample_rate: int | None,
    limits: AudioLimits,
    tmp_dir: str | None,
) -> DecodedAudio:
    if isinstance(source, Path):
        size = source.stat().st_size
        with source.open("rb") as f:
            head = f.read(_HEAD_BYTES)
    else:
        size = len(source)
        head = source[:_HEAD_BYTES]
    if size > limits.max_bytes:
        raise AudioTooLargeError(f"the audio is {size} bytes, over the {limits.max_bytes} byte limit (max_bytes)")
    if size == 0:
        raise EmptyAudioError("the audio is empty (0 bytes)")

    hint = _normalise_hint(format_hint)
    container, strong = _sniff(head)
    if hint in RAW_PCM_FORMATS and not (container and strong):
        raw = source.read_bytes() if isinstance(source, Path) else source
        return _decode_raw_pcm(raw, sample_rate, limits)
    if container is None:
        what = _describe_non_audio(head)
        if what is not None:
            raise UnsupportedFormatError(f"the data is not audio: it looks like {what}")
        raise AudioDecodeError(
            "the data is not in a recognised audio format (no known container header). "
            "If it is raw headerless PCM, pass format=pcm_s16le and its sample_rate (default 16000)"
        )
    if hint and hint not in RAW_PCM_FORMATS and hint != container:
        logger.debug("format hint %r ignored: the data is %s", hint, container)

    notes: list[str] = []
    wav_note = _wav_truncation_note(head, size) if container == "wav" else None
    if wav_note:
        notes.append(wav_note)
    samples: np.ndarray | None = None
    if container in _SOUNDFILE_CONTAINERS:
        try:
            samples = _decode_with_soundfile(source, limits, notes)
        except sf.SoundFileError as exc:
            logger.debug("libsndfile could not read the %s data (%s); trying ffmpeg", container, exc)
    if samples is None:
        if isinstance(source, Path):
            samples = _decode_with_ffmpeg(source, container, limits, notes)
        else:
            with tempfile.TemporaryDirectory(prefix="decode-", dir=tmp_dir) as tmp:
                path = Path(tmp) / "input"
                path.write_bytes(source)
                samples = _decode_with_ffmpeg(path, container, limits, notes)

    if samples.size == 0:
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise EmptyAudioError(f"the {container} audio contains no samples{detail}")
    if not np.isfinite(samples).all():
        raise AudioDecodeError(f"the {container} audio contains NaN or infinite sample values")
    if notes:
        logger.warning(
            "%s audio decoded to %.2f s but may be truncated or damaged: %s",
            container,
            len(samples) / SAMPLE_RATE,
            "; ".join(notes),
        )
    return DecodedAudio(samples=samples, sample_rate=SAMPLE_RATE, source_format=container)


def _normalise_hint(format_hint: str | None) -> str | None:
    if format_hint is None:
        return None
    hint = format_hint.strip().lower().lstrip(".")
    return hint.removeprefix("audio/") or None


def _decode_raw_pcm(raw: bytes, sample_rate: int | None, limits: AudioLimits) -> DecodedAudio:
    rate = SAMPLE_RATE if sample_rate is None else sample_rate
    if not isinstance(rate, int) or not _MIN_RAW_SAMPLE_RATE_HZ <= rate <= _MAX_RAW_SAMPLE_RATE_HZ:
        raise InputError(
            f"sample_rate for raw PCM must be an integer from {_MIN_RAW_SAMPLE_RATE_HZ} to "
            f"{_MAX_RAW_SAMPLE_RATE_HZ} Hz, got {sample_rate!r}"
        )
    if len(raw) // 2 > limits.max_duration_s * rate:
        raise _too_long(limits)
    samples = resample(pcm16_to_float32(raw), rate, SAMPLE_RATE)
    if samples.size == 0:
        raise EmptyAudioError("the raw PCM audio contains no samples")
    return DecodedAudio(samples=samples, sample_rate=SAMPLE_RATE, source_format="pcm_s16le")


def _too_long(limits: AudioLimits) -> AudioTooLongError:
    return AudioTooLongError(
        f"the audio is longer than the {limits.max_duration_s:g} s limit (max_duration_s); "
        "split it or raise the limit"
    )


class _MonoSink:
    """Collects decoded blocks: averages channels, resamples to 16 kHz as a stream, enforces the duration cap."""

    def __init__(self, in_rate: int, limits: AudioLimits) -> None:
        if in_rate <= 0:
            raise AudioDecodeError(f"the audio declares an invalid sample rate ({in_rate} Hz)")
        self._limits = limits
        self._max_samples = int(limits.max_duration_s * SAMPLE_RATE)
        self._stream = None if in_rate == SAMPLE_RATE else soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, "float32")
        self._parts: list[np.ndarray] = []
        self._count = 0

    def add(self, block: np.ndarray) -> None:
        """Add a (frames, channels) float32 block."""
        mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        self._push(np.ascontiguousarray(mono, dtype=np.float32), last=False)

    def finish(self) -> np.ndarray:
        if self._stream is not None:
            self._push(np.zeros(0, dtype=np.float32), last=True)
        if not self._parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._parts)

    def _push(self, mono: np.ndarray, *, last: bool) -> None:
        out = mono if self._stream is None else self._stream.resample_chunk(mono, last=last)
        if out.size:
            self._parts.append(out)
            self._count += out.size
        if self._count > self._max_samples:
            raise _too_long(self._limits)


def _decode_with_soundfile(source: bytes | Path, limits: AudioLimits, notes: list[str]) -> np.ndarray:
    file: BinaryIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    with sf.SoundFile(file) as f:
        rate, declared = f.samplerate, f.frames
        sink = _MonoSink(rate, limits)
        block_frames = rate * _DECODE_BLOCK_S
        decoded = 0
        while True:
            block = f.read(block_frames, dtype="float32", always_2d=True)
            if not len(block):
                break
            decoded += len(block)
            sink.add(block)
    if 0 < decoded < declared:
        notes.append(f"the header declares {declared / rate:.2f} s but only {decoded / rate:.2f} s could be decoded")
    return sink.finish()


def _decode_with_ffmpeg(path: Path, container: str, limits: AudioLimits, notes: list[str]) -> np.ndarray:
    exe = shutil.which("ffmpeg")
    if exe is None:
        raise UnsupportedFormatError(f"decoding {container} audio needs ffmpeg, which is not installed on the worker")
    # Native rate and channels out as float WAV on a pipe: downmix and resampling happen here, like libsndfile input.
    cmd = [
        exe, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+warning", "-threads", "1",
        "-i", str(path), "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-c:a", "pcm_f32le", "-f", "wav", "pipe:1",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        timed_out = threading.Event()

        def _kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(limits.decode_timeout_s, _kill)
        timer.daemon = True
        timer.start()
        try:
            assert proc.stdout is not None
            samples = _read_wav_stream(proc.stdout, limits)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if timed_out.is_set():
            raise AudioDecodeError(f"decoding the {container} audio took longer than {limits.decode_timeout_s:g} s")
        stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - _FFMPEG_LOG_TAIL_BYTES))
        problems = _ffmpeg_problems(stderr.read().decode("utf-8", "replace"), path)

    if proc.returncode != 0 and (samples is None or samples.size == 0):
        if any("matches no streams" in p for p in problems):
            raise UnsupportedFormatError(f"the {container} data contains no audio stream")
        message = problems[-1] if problems else f"ffmpeg exited with status {proc.returncode}"
        raise AudioDecodeError(f"the {container} data could not be decoded; it is corrupt or truncated ({message})")
    if problems:
        notes.append("ffmpeg reported: " + " | ".join(list(dict.fromkeys(problems))[:3]))
    return np.zeros(0, dtype=np.float32) if samples is None else samples


_FFMPEG_BENIGN = (
    "Guessed Channel Layout",
    "Cannot check for SPDIF",
    "Output file is empty",
    "Estimating duration",
    "To ignore this, add a trailing",
)


def _ffmpeg_problems(stderr: str, path: Path) -> list[str]:
    problems = []
    for line in stderr.replace(str(path), "input").splitlines():
        line = line.strip()
        if not line or any(b in line for b in _FFMPEG_BENIGN):
            continue
        # "[mp3 @ 0x55...] [warning] text" -> "mp3: text"
        line = re.sub(r"^\[(\w+) @ 0x[0-9a-f]+\]\s*", r"\1: ", line)
        problems.append(re.sub(r"\[(warning|error|fatal)\]\s*", "", line))
    return problems


def _read_wav_stream(stream: IO[bytes], limits: AudioLimits) -> np.ndarray | None:
    """Read ffmpeg's float WAV from a pipe block by block; None when it wrote no header (it failed to open)."""
    riff = stream.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return None
    channels = rate = 0
    while True:
        chunk = stream.read(8)
        if len(chunk) < 8:
            return None
        size = int.from_bytes(chunk[4:8], "little")
        if chunk[:4] == b"data":
            break
        payload = stream.read(size + (size & 1))
        if chunk[:4] == b"fmt " and len(payload) >= 8:
            channels = int.from_bytes(payload[2:4], "little")
            rate = int.from_bytes(payload[4:8], "little")
    if channels <= 0:
        raise AudioDecodeError("ffmpeg produced audio without channels")
    sink = _MonoSink(rate, limits)
    frame_bytes = 4 * channels
    block_bytes = frame_bytes * rate * _DECODE_BLOCK_S
    while True:
        data = stream.read(block_bytes)
        usable = len(data) - len(data) % frame_bytes
        if usable:
            sink.add(np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels))
        if len(data) < block_bytes:
            break
    return sink.finish()


# --- Container sniffing ---------------------------------------------------------------------------------------------
_SOUNDFILE_CONTAINERS = frozenset({"wav", "w64", "flac", "ogg", "aiff", "au", "caf"})
_STRONG_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"fLaC", "flac"),
    (0, b"OggS", "ogg"),
    (0, b"ID3", "mp3"),
    (4, b"ftyp", "mp4"),
    (0, b"\x1a\x45\xdf\xa3", "webm"),
    (0, b".snd", "au"),
    (0, b"caff", "caf"),
    (0, b"#!AMR", "amr"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"),
    (0, b"riff\x2e\x91\xcf\x11", "w64"),
)
_NON_AUDIO_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"\x7fELF", "an executable"),
)


def _sniff(head: bytes) -> tuple[str | None, bool]:
    """Return (container, strong) from the first bytes; strong means a multi-byte magic, not a frame sync."""
    if head[:4] in (b"RIFF", b"RIFX", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav", True
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff", True
    for offset, magic, name in _STRONG_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name, True
    if len(head) >= 4 and head[0] == 0xFF:
        b1, b2 = head[1], head[2]
        if b1 & 0xF6 == 0xF0 and (b2 >> 2) & 0x0F < 13:  # ADTS: 12-bit sync, layer 00
            return "aac", False
        version, layer = (b1 >> 3) & 3, (b1 >> 1) & 3
        if b1 & 0xE0 == 0xE0 and version != 1 and layer != 0 and b2 >> 4 != 0xF and (b2 >> 2) & 3 != 3:
            return "mp3", False
    return None, False


def _describe_non_audio(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, what in _NON_AUDIO_MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head[:512].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head[:512]) - 3:  # a multi-byte character cut at the end is still text
            return None
        text = head[: exc.start].decode("utf-8")
    if not text or not all(ch.isprintable() or ch in "\t\r\n\f" for ch in text):
        return None
    start = text.lstrip().lower()
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page (is the URL a web page rather than the audio file?)"
    if start.startswith("<?xml") or start.startswith("<"):
        return "XML or HTML text"
    if start.startswith(("{", "[")):
        return "JSON text"
    return "text"


def _wav_truncation_note(head: bytes, size: int) -> str | None:
    """Compare a RIFF WAV's declared data size with the bytes present (libsndfile silently clamps it)."""
    if head[:4] != b"RIFF":
        return None
    pos = 12
    while pos + 8 <= len(head):
        cid, csize = head[pos : pos + 4], int.from_bytes(head[pos + 4 : pos + 8], "little")
        if cid == b"data":
            present = max(size - (pos + 8), 0)
            if csize not in (0, 0xFFFFFFFF) and csize > present:
                return f"the WAV header declares {csize} bytes of audio data but the file holds {present}"
            return None
        pos += 8 + csize + (csize & 1)
    return None


# --- Base64 ----------------------------------------------------------------------------------------------------------
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_URLSAFE_TO_STD = str.maketrans("-_", "+/")


def _base64_payload(text: str, limits: AudioLimits) -> bytes:
    if text[:5].lower() == "data:":
        header, comma, text = text.partition(",")
        if not comma:
            raise InputError("the data URI has no ',' before its payload (expected data:audio/wav;base64,...)")
        params = [p.strip().lower() for p in header[5:].split(";")[1:]]
        if "base64" not in params:
            raise InputError("the data URI is not base64-encoded; use data:<type>;base64,<payload>")
    max_chars = 4 * -(-limits.max_bytes // 3)
    if len(text) > max_chars * 1.05 + 1024:  # room for line breaks; checked exactly below
        raise AudioTooLargeError(f"the base64 audio is over the {limits.max_bytes} byte limit (max_bytes)")
    compact = "".join(text.split())
    if len(compact) > max_chars:
        raise AudioTooLargeError(f"the base64 audio is over the {limits.max_bytes} byte limit (max_bytes)")
    if "-" in compact or "_" in compact:
        compact = compact.translate(_URLSAFE_TO_STD)
    missing = -len(compact) % 4
    if missing == 3:
        raise InputError(
            f"the audio is not valid base64 (nor an http(s)/s3 URL): {len(compact)} characters cannot be base64"
        )
    try:
        data = base64.b64decode(compact + "=" * missing, validate=True)
    except (binascii.Error, ValueError) as exc:
        bad = next((ch for ch in compact if not (ch.isascii() and (ch.isalnum() or ch in "+/="))), None)
        reason = f"it contains the character {bad!r}" if bad is not None else str(exc)
        raise InputError(f"the audio is not valid base64 (nor an http(s)/s3 URL): {reason}") from exc
    if len(data) > limits.max_bytes:
        raise AudioTooLargeError(f"the audio is {len(data)} bytes, over the {limits.max_bytes} byte limit (max_bytes)")
    return data


# --- Downloads -------------------------------------------------------------------------------------------------------
def fetch_url(
    url: str,
    dest_dir: str | os.PathLike[str],
    *,
    limits: AudioLimits = DEFAULT_LIMITS,
    s3: S3Credentials | None = None,
) -> Path:
    """Download an http(s) or ``s3://`` URL into a new file in ``dest_dir`` and return its path.

    The file is removed again if the download fails. The caller owns (and removes) a returned file.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "s3"):
        raise UrlNotAllowedError(f"URL scheme {scheme or '(none)'!r} is not allowed; use http, https or s3")
    fd, name = tempfile.mkstemp(prefix="download-", dir=dest_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            if scheme == "s3":
                _download_s3(parts, out, limits, s3)
            else:
                _download_http(url.strip(), out, limits)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def _redact(url: str) -> str:
    """The URL without query, fragment or user info (pre-signed URLs carry secrets in the query)."""
    p = urlsplit(url)
    host = p.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{p.port}" if p.port else ""
    return f"{p.scheme}://{host}{port}{p.path}"


def _is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    request_path: str
    addresses: tuple[str, ...]


def _check_url(url: str, limits: AudioLimits) -> _Target:
    """Validate scheme and resolve the host; refuse non-public addresses unless allowed."""
    try:
        parts: SplitResult = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError(f"the audio URL is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlNotAllowedError(f"URL scheme {scheme or '(none)'!r} is not allowed; use http or https")
    host = parts.hostname
    if not host:
        raise InputError(f"the audio URL has no host: {_redact(url)}")
    port = port or (443 if scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadError(f"could not resolve the host {host!r} of {_redact(url)}: {exc}") from exc
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not limits.allow_private_urls:
        for address in addresses:
            if not _is_public(ipaddress.ip_address(address.split("%")[0])):
                raise UrlNotAllowedError(
                    f"refusing to fetch {_redact(url)}: {host!r} resolves to {address}, which is not a public "
                    "address (loopback, private, link-local or reserved); set allow_private_urls to allow it"
                )
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise InputError("the audio URL contains spaces or control characters; percent-encode them (%20)")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(scheme, host, port, path, addresses)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _connect(target: _Target, deadline: float, limits: AudioLimits) -> tuple[http.client.HTTPConnection, socket.socket]:
    """Open a connection to one of the checked addresses (never a fresh DNS lookup)."""
    last: OSError | None = None
    for address in target.addresses:
        timeout = min(limits.connect_timeout_s, _remaining(deadline))
        try:
            sock = socket.create_connection((address, target.port), timeout=timeout)
            break
        except OSError as exc:
            last = exc
    else:
        raise last or OSError("no address to connect to")
    conn: http.client.HTTPConnection
    if target.scheme == "https":
        context = _tls_context()
        try:
            sock = context.wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        conn = http.client.HTTPSConnection(target.host, target.port, context=context)
    else:
        conn = http.client.HTTPConnection(target.host, target.port)
    conn.sock = sock
    return conn, sock


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def _download_http(url: str, out: BinaryIO, limits: AudioLimits) -> None:
    deadline = time.monotonic() + limits.download_timeout_s
    try:
        for _ in range(MAX_REDIRECTS + 1):
            target = _check_url(url, limits)
            conn, sock = _connect(target, deadline, limits)
            try:
                sock.settimeout(_remaining(deadline))
                conn.request(
                    "GET",
                    target.request_path,
                    headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", "Connection": "close"},
                )
                resp = conn.getresponse()
                location = resp.getheader("Location")
                if resp.status in _REDIRECT_STATUSES and location:
                    logger.debug("%s redirects (HTTP %d)", _redact(url), resp.status)
                    url = urljoin(url, location)
                    continue
                if not 200 <= resp.status < 300:
                    raise DownloadError(
                        f"download failed with HTTP {resp.status} ({resp.reason}) from {_redact(url)}",
                        status=resp.status,
                    )
                _copy_body(resp, sock, out, deadline, limits, _redact(url))
                return
            finally:
                conn.close()
                sock.close()
        raise DownloadError(f"download stopped after {MAX_REDIRECTS} redirects, last to {_redact(url)}")
    except TimeoutError as exc:
        raise DownloadError(
            f"download of {_redact(url)} timed out after {limits.download_timeout_s:g} s (download_timeout_s)"
        ) from exc
    except ssl.SSLError as exc:
        raise DownloadError(f"TLS error while downloading {_redact(url)}: {exc}") from exc
    except http.client.InvalidURL as exc:
        raise InputError(f"the audio URL is malformed: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"download of {_redact(url)} failed: {exc!r}") from exc


def _copy_body(
    resp: http.client.HTTPResponse,
    sock: socket.socket,
    out: BinaryIO,
    deadline: float,
    limits: AudioLimits,
    label: str,
) -> None:
    length = resp.getheader("Content-Length", "").strip()
    if length.isdigit() and int(length) > limits.max_bytes:
        raise AudioTooLargeError(
            f"the audio at {label} is {int(length)} bytes, over the {limits.max_bytes} byte limit (max_bytes)"
        )
    total = 0
    while True:
        sock.settimeout(_remaining(deadline))
        chunk = resp.read1(_DOWNLOAD_CHUNK_BYTES)
        if not chunk:
            return
        total += len(chunk)
        if total > limits.max_bytes:
            raise AudioTooLargeError(f"the audio at {label} is over the {limits.max_bytes} byte limit (max_bytes)")
        out.write(chunk)


def _download_s3(parts: SplitResult, out: BinaryIO, limits: AudioLimits, creds: S3Credentials | None) -> None:
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise InputError("an S3 URL must look like s3://bucket/key")
    label = f"s3://{bucket}/{key}"
    if creds is None:
        raise DownloadError(
            f"cannot fetch {label}: the worker has no S3 credentials; set S3_ACCESS_KEY and S3_SECRET_KEY "
            "(and S3_ENDPOINT for storage other than AWS)"
        )
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise DownloadError(f"cannot fetch {label}: s3:// URLs need boto3 on the worker (pip install boto3)") from exc

    config = Config(
        connect_timeout=min(limits.connect_timeout_s, limits.download_timeout_s),
        read_timeout=limits.download_timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        s3={"addressing_style": "path"} if creds.endpoint_url else None,
    )
    client = boto3.session.Session().client(
        "s3",
        aws_access_key_id=creds.access_key,
        aws_secret_access_key=creds.secret_key,
        endpoint_url=creds.endpoint_url,
        region_name=creds.region,
        config=config,
    )
    deadline = time.monotonic() + limits.download_timeout_s
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        length = obj.get("ContentLength")
        if isinstance(length, int) and length > limits.max_bytes:
            raise AudioTooLargeError(
                f"the audio at {label} is {length} bytes, over the {limits.max_bytes} byte limit (max_bytes)"
            )
        body = obj["Body"]
        try:
            total = 0
            for chunk in body.iter_chunks(_DOWNLOAD_CHUNK_BYTES):
                total += len(chunk)
                if total > limits.max_bytes:
                    raise AudioTooLargeError(f"the audio at {label} is over the {limits.max_bytes} byte limit")
                if time.monotonic() > deadline:
                    raise DownloadError(f"download of {label} timed out after {limits.download_timeout_s:g} s")
                out.write(chunk)
        finally:
            body.close()
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = exc.response.get("Error", {}).get("Code", "error")
        raise DownloadError(f"download of {label} failed with HTTP {status} ({code})", status=status) from exc
    except BotoCoreError as exc:
        raise DownloadError(f"download of {label} failed: {exc}") from exc
