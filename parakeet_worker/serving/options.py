"""The composition root's one job: turn :class:`~parakeet_worker.config.Settings` into the option objects.

Each option dataclass owns its defaults; a setting left unset (``None``) keeps that default. A value an option
refuses becomes an :class:`~parakeet_worker.errors.InputError` naming the environment variable, at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

from parakeet_worker.audio import AudioLimits
from parakeet_worker.config import Settings
from parakeet_worker.engine import EngineOptions
from parakeet_worker.errors import InputError
from parakeet_worker.serving.budget import JobLimits
from parakeet_worker.serving.ws_grants import ServerLimits
from parakeet_worker.streaming import StreamingConfig

_Option = TypeVar("_Option")


@dataclass(frozen=True)
class WorkerOptions:
    engine: EngineOptions
    audio: AudioLimits
    server: ServerLimits
    jobs: JobLimits


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _build(kind: type[_Option], what: str, **values: Any) -> _Option:
    try:
        return kind(**_given(**values))
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None


def worker_options(settings: Settings) -> WorkerOptions:
    """Every option object the worker needs, built from the settings (unset ones keep the options' defaults)."""
    s = settings
    streaming = _build(StreamingConfig, "streaming settings (PARAKEET_STREAM_*)", left_s=s.stream_left_s,
                       chunk_s=s.stream_chunk_s, right_s=s.stream_right_s, final_pass_max_s=s.stream_final_pass_max_s)
    audio = _build(AudioLimits, "audio limits", max_bytes=s.max_download_bytes, max_duration_s=s.max_audio_s,
                   download_timeout_s=s.download_timeout_s, allow_private_urls=s.allow_private_urls)
    engine = _build(
        EngineOptions, "engine settings", max_batch=s.max_batch, batch_wait_ms=s.batch_wait_ms,
        full_attention_max_s=s.full_attention_max_s or None, max_audio_s=audio.max_duration_s,
        default_chunk_s=s.chunk_s, default_overlap_s=s.chunk_overlap_s, streaming=streaming,
        stream_step_budget_s=None if s.stream_step_budget_ms is None else s.stream_step_budget_ms / 1000,
        stream_early_final_s=s.stream_early_final_s)
    if engine.default_overlap_s >= engine.default_chunk_s / 2:
        raise InputError("PARAKEET_CHUNK_OVERLAP_S must be less than half of PARAKEET_CHUNK_S")
    server = _build(ServerLimits, "WebSocket settings (PARAKEET_WS_*)", max_sessions=s.ws_max_sessions,
                    idle_timeout_s=s.ws_idle_timeout_s, max_session_s=s.ws_max_session_s)
    jobs = _build(JobLimits, "job limits (PARAKEET_JOB_AUDIO_BUDGET_S, PARAKEET_WORKER_AUDIO_BUDGET_S, "
                  "PARAKEET_AUDIO_BUDGET_WAIT_S, PARAKEET_JOB_DECODE_CONCURRENCY, PARAKEET_SHUTDOWN_GRACE_S)",
                  job_audio_budget_s=s.job_audio_budget_s, worker_audio_budget_s=s.worker_audio_budget_s or None,
                  budget_wait_s=s.audio_budget_wait_s, job_decode_concurrency=s.job_decode_concurrency,
                  shutdown_grace_s=s.shutdown_grace_s)
    return WorkerOptions(engine=engine, audio=audio, server=server, jobs=jobs)


def effective_settings(settings: Settings) -> dict[str, Any]:
    """Every setting's value in force, by field name: what was set, or the option default an unset one keeps.
    A secret shows only whether it is set (``api_token``: ``"<set>"`` or ``""``)."""
    o = worker_options(settings)
    values = {f.name: getattr(settings, f.name) for f in fields(settings)}
    values.update(
        max_batch=o.engine.max_batch, batch_wait_ms=o.engine.batch_wait_ms, chunk_s=o.engine.default_chunk_s,
        chunk_overlap_s=o.engine.default_overlap_s, max_audio_s=o.audio.max_duration_s,
        max_download_bytes=o.audio.max_bytes, download_timeout_s=o.audio.download_timeout_s,
        allow_private_urls=o.audio.allow_private_urls,
        ws_max_sessions=o.server.max_sessions, ws_idle_timeout_s=o.server.idle_timeout_s,
        ws_max_session_s=o.server.max_session_s, stream_left_s=o.engine.streaming.left_s,
        stream_chunk_s=o.engine.streaming.chunk_s, stream_right_s=o.engine.streaming.right_s,
        stream_step_budget_ms=o.engine.stream_step_budget_s * 1000,
        stream_final_pass_max_s=o.engine.streaming.final_pass_max_s,
        stream_early_final_s=o.engine.stream_early_final_s,
        job_audio_budget_s=o.jobs.job_audio_budget_s, worker_audio_budget_s=o.jobs.worker_audio_budget_s,
        audio_budget_wait_s=o.jobs.budget_wait_s, job_decode_concurrency=o.jobs.job_decode_concurrency,
        shutdown_grace_s=o.jobs.shutdown_grace_s, api_token="<set>" if settings.api_token else "",
    )
    return values
