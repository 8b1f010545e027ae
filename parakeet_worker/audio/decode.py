"""Decode bytes or a file in any common container to float32 mono 16 kHz samples.

Decoding
    The container is detected from the first bytes (:mod:`parakeet_worker.audio.sniff`), never from a file name or
    a caller's hint. WAV, FLAC, Ogg (Vorbis/Opus), AIFF, AU and CAF are read with libsndfile (``soundfile``); MP3,
    AAC, MP4/M4A, WebM/Matroska, AMR and ASF/WMA, and anything libsndfile fails on, go through ``ffmpeg`` (a
    subprocess reading a file path, bounded by ``AudioLimits.decode_timeout_s``). Channels are averaged to mono and
    the rate is converted to 16 kHz with soxr, block by block, so memory stays bounded and decoding stops as soon as
    the duration limit is passed. The duration is counted from decoded samples, never taken from headers; an
    exact header (libsndfile's frame count, or the duration a container states to ffmpeg) that already declares
    more than the limit is refused before decoding.
    Absurd headers (rates outside 1-384 kHz, more than 64 channels) and non-finite or absurdly large samples are
    refused (:class:`~parakeet_worker.audio.pcm.MonoSink`).

ffmpeg only demuxes what was sniffed
    ffmpeg is told the container (``-f``), may use only that demuxer (``-format_whitelist``) and only the ``file``
    protocol: it never probes the bytes itself, so a playlist (HLS, ffconcat) behind an ID3 tag sniffed as MP3 is
    read as MP3 and fails, instead of making ffmpeg open the local files or URLs it names.

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
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import soundfile as sf

from parakeet_worker.audio.limits import (
    DEFAULT_LIMITS,
    MAX_SAMPLE_RATE_HZ,
    MIN_SAMPLE_RATE_HZ,
    AudioLimits,
    DecodedAudio,
    too_long_error,
)
from parakeet_worker.audio.pcm import MonoSink, pcm16_to_float32, resample
from parakeet_worker.audio.sniff import (
    HEAD_BYTES,
    SOUNDFILE_CONTAINERS,
    describe_non_audio,
    sniff,
    wav_truncation_note,
)
from parakeet_worker.errors import (
    AudioDecodeError,
    AudioTooLargeError,
    EmptyAudioError,
    InputError,
    ParakeetError,
    UnsupportedFormatError,
)
from parakeet_worker.transcript import SAMPLE_RATE_HZ

logger = logging.getLogger(__name__)

RAW_PCM_FORMATS = frozenset({"pcm_s16le", "s16le"})
"""``format_hint`` values that mean headerless 16-bit little-endian mono PCM."""

_FFMPEG_LOG_TAIL_BYTES = 1 << 16
_UNKNOWN_FRAMES = 1 << 62
"""libsndfile reports an unknown length as SF_COUNT_MAX; frame counts from here up are not a declared length."""

FFMPEG_DEMUXERS = {
    "wav": "wav", "w64": "w64", "flac": "flac", "ogg": "ogg", "aiff": "aiff", "au": "au", "caf": "caf",
    "mp3": "mp3", "aac": "aac", "mp4": "mov", "webm": "matroska", "amr": "amr", "asf": "asf",
}  # fmt: skip
"""The one ffmpeg demuxer each sniffed container may use (none of them follows references to other files)."""


def decode_bytes(
    data: bytes,
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode an in-memory audio file (any supported container) or, with a raw hint, headerless PCM."""
    return decode_source(data, format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=None)


def decode_file(
    path: str | os.PathLike[str],
    *,
    format_hint: str | None = None,
    sample_rate: int | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> DecodedAudio:
    """Decode an audio file on disk. The name's extension is ignored; the bytes decide."""
    return decode_source(Path(path), format_hint=format_hint, sample_rate=sample_rate, limits=limits, tmp_dir=None)


def decode_source(
    source: bytes | Path,
    *,
    format_hint: str | None,
    sample_rate: int | None,
    limits: AudioLimits,
    tmp_dir: str | None,
) -> DecodedAudio:
    """Bytes or a file to samples: check the size, sniff the container, decode, check the result.

    ``tmp_dir`` holds the temp file ffmpeg reads when ``source`` is bytes (default: the system temp dir).
    A refusal is raised without its traceback: the decoders' frames hold blocks of samples, and callers keep
    the errors of refused inputs until the job ends.
    """
    try:
        return _decode_source(source, format_hint, sample_rate, limits, tmp_dir)
    except ParakeetError as exc:
        raise exc.with_traceback(None) from exc.__cause__


def _decode_source(
    source: bytes | Path, format_hint: str | None, sample_rate: int | None, limits: AudioLimits, tmp_dir: str | None
) -> DecodedAudio:
    head = _checked_head(source, limits)
    hint = _normalise_hint(format_hint)
    container, strong = sniff(head)
    if hint in RAW_PCM_FORMATS and not (container and strong):
        raw = source.read_bytes() if isinstance(source, Path) else source
        return _decode_raw_pcm(raw, sample_rate, limits)
    if container is None:
        raise _unrecognised(head)
    if hint and hint not in RAW_PCM_FORMATS and hint != container:
        logger.debug("format hint %r ignored: the data is %s", hint, container)

    notes: list[str] = []
    wav_note = wav_truncation_note(head, _size(source)) if container == "wav" else None
    if wav_note:
        notes.append(wav_note)
    samples = _decode_container(source, container, limits, notes, tmp_dir)
    return _checked_result(samples, container, notes)


# --- Phases of decode_source -----------------------------------------------------------------------------------
def _size(source: bytes | Path) -> int:
    return source.stat().st_size if isinstance(source, Path) else len(source)


def _checked_head(source: bytes | Path, limits: AudioLimits) -> bytes:
    """The first bytes, after refusing a source over the byte limit or empty."""
    size = _size(source)
    if isinstance(source, Path):
        with source.open("rb") as f:
            head = f.read(HEAD_BYTES)
    else:
        head = source[:HEAD_BYTES]
    if size > limits.max_bytes:
        raise AudioTooLargeError(f"the audio is {size} bytes, over the {limits.max_bytes} byte limit (max_bytes)")
    if size == 0:
        raise EmptyAudioError("the audio is empty (0 bytes)")
    return head


def _normalise_hint(format_hint: str | None) -> str | None:
    if format_hint is None:
        return None
    hint = format_hint.strip().lower().lstrip(".")
    return hint.removeprefix("audio/") or None


def _unrecognised(head: bytes) -> Exception:
    what = describe_non_audio(head)
    if what is not None:
        return UnsupportedFormatError(f"the data is not audio: it looks like {what}")
    return AudioDecodeError(
        "the data is not in a recognised audio format (no known container header). "
        "If it is raw headerless PCM, pass format=pcm_s16le and its sample_rate (default 16000)"
    )


def _decode_container(
    source: bytes | Path, container: str, limits: AudioLimits, notes: list[str], tmp_dir: str | None
) -> np.ndarray:
    """libsndfile for the containers it reads, ffmpeg for the rest and for whatever libsndfile fails on."""
    if container in SOUNDFILE_CONTAINERS:
        try:
            return _decode_with_soundfile(source, limits, notes)
        except sf.SoundFileError as exc:
            logger.debug("libsndfile could not read the %s data (%s); trying ffmpeg", container, exc)
    if isinstance(source, Path):
        return _decode_with_ffmpeg(source, container, limits, notes)
    with tempfile.TemporaryDirectory(prefix="decode-", dir=tmp_dir) as tmp:
        path = Path(tmp) / "input"
        path.write_bytes(source)
        return _decode_with_ffmpeg(path, container, limits, notes)


def _checked_result(samples: np.ndarray, container: str, notes: list[str]) -> DecodedAudio:
    if samples.size == 0:
        detail = f" ({'; '.join(notes)})" if notes else ""
        raise EmptyAudioError(f"the {container} audio contains no samples{detail}")
    if notes:
        logger.warning(
            "%s audio decoded to %.2f s but may be truncated or damaged: %s",
            container,
            len(samples) / SAMPLE_RATE_HZ,
            "; ".join(notes),
        )
    return DecodedAudio(samples=samples, sample_rate=SAMPLE_RATE_HZ, source_format=container)


# --- Decoders --------------------------------------------------------------------------------------------------
def _decode_raw_pcm(raw: bytes, sample_rate: int | None, limits: AudioLimits) -> DecodedAudio:
    rate = SAMPLE_RATE_HZ if sample_rate is None else sample_rate
    if not isinstance(rate, int) or not MIN_SAMPLE_RATE_HZ <= rate <= MAX_SAMPLE_RATE_HZ:
        raise InputError(
            f"sample_rate for raw PCM must be an integer from {MIN_SAMPLE_RATE_HZ} to "
            f"{MAX_SAMPLE_RATE_HZ} Hz, got {sample_rate!r}"
        )
    if len(raw) // 2 > limits.max_duration_s * rate:
        raise too_long_error(limits)
    samples = resample(pcm16_to_float32(raw), rate, SAMPLE_RATE_HZ)
    if samples.size == 0:
        raise EmptyAudioError("the raw PCM audio contains no samples")
    return DecodedAudio(samples=samples, sample_rate=SAMPLE_RATE_HZ, source_format="pcm_s16le")


def _decode_with_soundfile(source: bytes | Path, limits: AudioLimits, notes: list[str]) -> np.ndarray:
    file: BinaryIO | Path = io.BytesIO(source) if isinstance(source, bytes) else source
    with sf.SoundFile(file) as f:
        rate, declared = f.samplerate, f.frames
        sink = MonoSink(rate, f.channels, limits)
        if 0 < declared < _UNKNOWN_FRAMES and declared / rate > limits.max_duration_s:
            raise too_long_error(limits, declared / rate)  # exact for these containers: refuse before decoding
        decoded = 0
        while True:
            block = f.read(sink.block_frames, dtype="float32", always_2d=True)
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
    samples, returncode, log = _run_ffmpeg(_ffmpeg_command(exe, path, container), container, limits)
    problems = _ffmpeg_problems(log, path)
    if returncode != 0 and (samples is None or samples.size == 0):
        if any("matches no streams" in p for p in problems):
            raise UnsupportedFormatError(f"the {container} data contains no audio stream")
        message = problems[-1] if problems else f"ffmpeg exited with status {returncode}"
        raise AudioDecodeError(f"the {container} data could not be decoded; it is corrupt or truncated ({message})")
    if problems:
        notes.append("ffmpeg reported: " + " | ".join(list(dict.fromkeys(problems))[:3]))
    return np.zeros(0, dtype=np.float32) if samples is None else samples


def _ffmpeg_command(exe: str, path: Path, container: str) -> list[str]:
    # Only the sniffed container's demuxer, only local files (the input is a file we wrote): ffmpeg must never
    # probe the bytes itself, or a playlist behind an ID3 tag makes it open whatever files or URLs it names.
    demuxer = FFMPEG_DEMUXERS.get(container)
    if demuxer is None:
        raise UnsupportedFormatError(f"{container} audio is not supported")
    # Native rate and channels out as float WAV on a pipe: downmix and resampling happen here, like libsndfile input.
    return [
        exe, "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", "-threads", "1",
        "-protocol_whitelist", "file", "-format_whitelist", demuxer, "-f", demuxer,
        "-i", f"file:{path}", "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1",
        "-c:a", "pcm_f32le", "-f", "wav", "pipe:1",
    ]  # fmt: skip


def _run_ffmpeg(cmd: list[str], container: str, limits: AudioLimits) -> tuple[np.ndarray | None, int, str]:
    """Run ffmpeg under the decode deadline: (samples or None, exit status, the tail of its log)."""
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
            samples = _read_wav_stream(proc.stdout, limits, lambda: _declared_duration_s(stderr.fileno()))
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
        return samples, proc.returncode, stderr.read().decode("utf-8", "replace")


_FFMPEG_BENIGN = (
    "Guessed Channel Layout",
    "Cannot check for SPDIF",
    "Output file is empty",
    "Estimating duration",
    "To ignore this, add a trailing",
)


_DURATION_RE = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _declared_duration_s(stderr_fd: int) -> float | None:
    """The input's duration from ffmpeg's log, when the container states it (not estimated from a bitrate).

    ffmpeg logs the input before it writes the WAV header to the pipe, so once the header is read the line is
    in the log. ``pread`` leaves the file offset ffmpeg shares with us alone.
    """
    log = os.pread(stderr_fd, _FFMPEG_LOG_TAIL_BYTES, 0).decode("utf-8", "replace")
    match = _DURATION_RE.search(log)
    if match is None or "Estimating duration" in log:  # an MP3 without a length header: a guess
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _ffmpeg_problems(stderr: str, path: Path) -> list[str]:
    problems = []
    for line in stderr.replace(str(path), "input").splitlines():
        line = line.strip()
        if not line or any(b in line for b in _FFMPEG_BENIGN) or re.search(r"\[(info|verbose|debug)\]", line):
            continue
        # "[mp3 @ 0x55...] [warning] text" -> "mp3: text"
        line = re.sub(r"^\[(\w+) @ 0x[0-9a-f]+\]\s*", r"\1: ", line)
        problems.append(re.sub(r"\[(warning|error|fatal)\]\s*", "", line))
    return problems


def _read_wav_stream(
    stream: IO[bytes], limits: AudioLimits, declared_duration_s: Callable[[], float | None]
) -> np.ndarray | None:
    """Read ffmpeg's float WAV from a pipe block by block; None when it wrote no header (it failed to open).

    Audio whose container states a duration over the limit is refused before any sample is read.
    """
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
    sink = MonoSink(rate, channels, limits)
    declared = declared_duration_s()
    if declared is not None and declared > limits.max_duration_s:
        raise too_long_error(limits, declared)
    frame_bytes = 4 * channels
    block_bytes = frame_bytes * sink.block_frames
    while True:
        data = stream.read(block_bytes)
        usable = len(data) - len(data) % frame_bytes
        if usable:
            sink.add(np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels))
        if len(data) < block_bytes:
            break
    return sink.finish()
