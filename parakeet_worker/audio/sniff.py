"""Recognise a container from its first bytes, never from a file name, and name common non-audio data."""

from __future__ import annotations

HEAD_BYTES = 4096
"""How many leading bytes are read for sniffing and the WAV truncation check."""

SOUNDFILE_CONTAINERS = frozenset({"wav", "w64", "flac", "ogg", "aiff", "au", "caf"})
"""Containers libsndfile reads; every other container goes to ffmpeg."""

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


def sniff(head: bytes) -> tuple[str | None, bool]:
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


def describe_non_audio(head: bytes) -> str | None:
    """What recognisable non-audio data is ("a PNG image", "an HTML page ..."), or None when it is not known."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    for magic, what in _NON_AUDIO_MAGIC:
        if head.startswith(magic):
            return what
    text = _printable_text(head[:512])
    if text is None:
        return None
    start = text.lstrip().lower()
    if start.startswith(("<!doctype html", "<html")):
        return "an HTML page (is the URL a web page rather than the audio file?)"
    if start.startswith("<?xml") or start.startswith("<"):
        return "XML or HTML text"
    if start.startswith(("{", "[")):
        return "JSON text"
    return "text"


def _printable_text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # a multi-byte character cut at the end is still text
            return None
        text = head[: exc.start].decode("utf-8")
    if not text or not all(ch.isprintable() or ch in "\t\r\n\f" for ch in text):
        return None
    return text


def wav_truncation_note(head: bytes, size: int) -> str | None:
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
