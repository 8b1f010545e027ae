"""Typed errors of the worker.

Every error a user can cause is a subclass of :class:`ParakeetError` and also of the matching built-in
(``ValueError`` for bad input, ``RuntimeError`` for a worker that cannot serve), so callers can catch either.
Messages name the problem and, where there is one, the fix. ``code`` is a stable machine-readable name used in
job errors and WebSocket error messages.
"""

from __future__ import annotations


class ParakeetError(Exception):
    """Base class of every error the worker reports to a caller."""

    code = "error"


# --- Bad requests ---------------------------------------------------------------------------------------------
class InputError(ParakeetError, ValueError):
    """The job input is malformed: unknown key, wrong type, value out of range, missing audio, ..."""

    code = "invalid_input"


# --- Audio ------------------------------------------------------------------------------------------------------
class AudioError(ParakeetError, ValueError):
    """The audio could not be turned into samples."""

    code = "audio_error"


class AudioDecodeError(AudioError):
    """The bytes are not decodable audio (corrupt, truncated, not audio at all)."""

    code = "audio_corrupt"


class UnsupportedFormatError(AudioError):
    """The container or codec is not one the worker can decode."""

    code = "audio_unsupported"


class EmptyAudioError(AudioError):
    """The audio decodes to no samples (or is shorter than the model can transcribe)."""

    code = "audio_empty"


class AudioTooLargeError(AudioError):
    """The payload or download is larger than the configured byte limit."""

    code = "audio_too_large"


class AudioTooLongError(AudioError):
    """The decoded audio is longer than the configured duration limit."""

    code = "audio_too_long"


class DownloadError(AudioError):
    """An audio URL could not be fetched (HTTP status, timeout, connection failure)."""

    code = "download_failed"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UrlNotAllowedError(AudioError):
    """The URL's scheme or address is refused (loopback, private or link-local targets, non-http schemes)."""

    code = "url_not_allowed"


# --- The worker ---------------------------------------------------------------------------------------------------
class ModelLoadError(ParakeetError, RuntimeError):
    """No model could be loaded from any configured source."""

    code = "model_unavailable"


class EngineClosedError(ParakeetError, RuntimeError):
    """The engine was shut down; no more work is accepted."""

    code = "engine_closed"


class EngineOverloadedError(ParakeetError, RuntimeError):
    """The engine's queue is full; the caller should retry later or on another worker."""

    code = "overloaded"
