"""One settings object, read from the environment in one place.

Every module takes its configuration as parameters; only :meth:`Settings.from_env` reads ``os.environ``.
Invalid values raise :class:`~parakeet_worker.errors.InputError` naming the variable and what it accepts, at
startup.

This module is a leaf: it imports only :mod:`parakeet_worker.errors` and the standard library. A setting that
tunes an option dataclass (engine, streaming window, audio limits, WebSocket server) is ``None`` unless its
variable is set: the option dataclass owns the default, and the composition root
(:mod:`parakeet_worker.serving.options`) builds every option object from these settings.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from parakeet_worker.errors import InputError

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"

DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "bfloat16", "float16", "float32"]
LogFormat = Literal["auto", "json", "text"]
RunpodMode = Literal["queue", "lb"]


@dataclass(frozen=True)
class S3Credentials:
    """Credentials for ``s3://`` URLs, read by :meth:`from_env` with the other settings."""

    access_key: str
    secret_key: str = field(repr=False)
    endpoint_url: str | None = None
    region: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Credentials | None:
        """Read ``S3_ACCESS_KEY``, ``S3_SECRET_KEY``, ``S3_ENDPOINT`` and ``S3_REGION``; None when no key is set."""
        env = os.environ if env is None else env
        access = env.get("S3_ACCESS_KEY", "").strip()
        secret = env.get("S3_SECRET_KEY", "").strip()
        if not access and not secret:
            return None
        if not access or not secret:
            missing = "S3_ACCESS_KEY" if not access else "S3_SECRET_KEY"
            raise ValueError(f"{missing} is not set; set both S3_ACCESS_KEY and S3_SECRET_KEY, or neither")
        return cls(
            access_key=access,
            secret_key=secret,
            endpoint_url=env.get("S3_ENDPOINT", "").strip() or None,
            region=env.get("S3_REGION", "").strip() or None,
        )


@dataclass(frozen=True)
class Settings:
    # Model
    model: str = DEFAULT_MODEL  # PARAKEET_MODEL: a Hugging Face id or a path to a local .nemo file
    model_dir: Path = Path("/models")  # PARAKEET_MODEL_DIR: baked-in models (Docker build arg) / other volume
    runpod_volume: Path = Path("/runpod-volume")  # RUNPOD_VOLUME: RunPod network volume and cached models
    device: DeviceChoice = "auto"  # PARAKEET_DEVICE
    dtype: DtypeChoice = "auto"  # PARAKEET_DTYPE: auto = bf16 on CUDA and on CPUs with bf16, else fp32
    warmup: bool = True  # PARAKEET_WARMUP: run one inference before reporting ready
    cpu_threads: int = 0  # PARAKEET_CPU_THREADS: torch intra-op threads on CPU; 0 = torch's default
    # Engine (None: EngineOptions' default)
    max_batch: int | None = None  # PARAKEET_MAX_BATCH: requests in one forward pass
    batch_wait_ms: float | None = None  # PARAKEET_BATCH_WAIT_MS: how long the engine collects requests for a batch
    full_attention_max_s: float = 0.0  # PARAKEET_FULL_ATTENTION_MAX_S: 0 = model card (24 min on 80 GB), scaled
    chunk_s: float | None = None  # PARAKEET_CHUNK_S: default window for chunk_long_audio
    chunk_overlap_s: float | None = None  # PARAKEET_CHUNK_OVERLAP_S
    # Jobs and audio (None: AudioLimits' default)
    concurrency: int = 4  # PARAKEET_CONCURRENCY: RunPod jobs held by one worker at once
    max_audio_s: float | None = None  # PARAKEET_MAX_AUDIO_S (also the engine's limit)
    max_download_bytes: int | None = None  # PARAKEET_MAX_DOWNLOAD_BYTES
    download_timeout_s: float | None = None  # PARAKEET_DOWNLOAD_TIMEOUT_S
    allow_private_urls: bool | None = None  # PARAKEET_ALLOW_PRIVATE_URLS: allow loopback/private URL targets
    # Batch jobs' decoded audio and loading (None: JobLimits' default)
    job_audio_budget_s: float | None = None  # PARAKEET_JOB_AUDIO_BUDGET_S: decoded audio one job holds at once
    worker_audio_budget_s: float | None = None  # PARAKEET_WORKER_AUDIO_BUDGET_S: all jobs at once; 0 = from memory
    audio_budget_wait_s: float | None = None  # PARAKEET_AUDIO_BUDGET_WAIT_S: wait for the worker's budget
    job_decode_concurrency: int | None = None  # PARAKEET_JOB_DECODE_CONCURRENCY: inputs of a job loading at once
    shutdown_grace_s: float | None = None  # PARAKEET_SHUTDOWN_GRACE_S: after SIGTERM, jobs in flight get this long
    s3: S3Credentials | None = None  # S3_ACCESS_KEY, S3_SECRET_KEY, S3_ENDPOINT, S3_REGION
    # Real-time streaming (None: ServerLimits', StreamingConfig's and EngineOptions' defaults)
    ws_host: str = "0.0.0.0"  # PARAKEET_WS_HOST: interface the WebSocket server listens on
    ws_port: int = 8765  # PARAKEET_WS_PORT: expose it as a TCP port on RunPod
    grpc_port: int = 50051  # PARAKEET_GRPC_PORT: the Riva-compatible gRPC face (expose as TCP on RunPod); 0 = off
    ws_max_sessions: int | None = None  # PARAKEET_WS_MAX_SESSIONS: more connections are refused with HTTP 503
    ws_idle_timeout_s: float | None = None  # PARAKEET_WS_IDLE_TIMEOUT_S: no audio and no message ends a session
    ws_max_session_s: float | None = None  # PARAKEET_WS_MAX_SESSION_S: upper bound of one session
    stream_left_s: float | None = None  # PARAKEET_STREAM_LEFT_S: encoder context before each chunk
    stream_chunk_s: float | None = None  # PARAKEET_STREAM_CHUNK_S: audio committed per step (80 ms multiple)
    stream_right_s: float | None = None  # PARAKEET_STREAM_RIGHT_S: lookahead after each chunk (80 ms multiple)
    stream_step_budget_ms: float | None = None  # PARAKEET_STREAM_STEP_BUDGET_MS: longest forward; 0 = no split
    stream_final_pass_max_s: float | None = None  # PARAKEET_STREAM_FINAL_PASS_MAX_S: offline finals up to this; 0 = off
    stream_early_final_s: float | None = None  # PARAKEET_STREAM_EARLY_FINAL_S: pause starting the final pass; 0 = off
    # PARAKEET_API_TOKEN: the token every face accepts standalone (``--token`` wins) and in load-balancing mode;
    # empty: a generated one. Never logged (a secret-looking variable: masked in every log line).
    api_token: str = field(default="", repr=False)
    # RunPod endpoint type: queue (jobs via /run and /runsync; websocket jobs announce the port) or lb (a
    # load-balancing endpoint: the app itself on PORT, /ping on PORT_HEALTH, POST /transcribe for batch input)
    runpod_mode: RunpodMode = "queue"  # PARAKEET_RUNPOD_MODE
    lb_port: int = 80  # PORT: set by RunPod on load-balancing endpoints
    lb_health_port: int = 0  # PORT_HEALTH: set by RunPod; 0 = the same as PORT
    runpod_public_ip: str = ""  # RUNPOD_PUBLIC_IP: set by RunPod when a TCP port is exposed
    runpod_tcp_port: int = 0  # RUNPOD_TCP_PORT_<ws_port>: the public port RunPod maps to ws_port
    runpod_grpc_tcp_port: int = 0  # RUNPOD_TCP_PORT_<grpc_port>: the public port RunPod maps to grpc_port
    # Observability
    log_format: LogFormat = "auto"  # PARAKEET_LOG_FORMAT: auto = JSON lines on RunPod, text elsewhere
    metrics_file: str = "/tmp/parakeet-metrics.jsonl"  # PARAKEET_METRICS_FILE: per-request JSON lines; "off" disables
    log_transcripts: bool = False  # PARAKEET_LOG_TRANSCRIPTS: debug only; off = transcripts masked in every log line

    def metrics_path(self) -> Path | None:
        return None if self.metrics_file.strip().lower() in ("off", "none", "0", "") else Path(self.metrics_file)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}  # each parsed to its field's type by _parse
        for name, var in _ENV_NAMES.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(name, var, raw)
        try:
            values["s3"] = S3Credentials.from_env(env)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        port = values.get("ws_port", cls.ws_port)
        mapped = env.get(f"RUNPOD_TCP_PORT_{port}")
        if mapped:
            values["runpod_tcp_port"] = _parse("runpod_tcp_port", f"RUNPOD_TCP_PORT_{port}", mapped)
        grpc_port = values.get("grpc_port", cls.grpc_port)
        grpc_mapped = env.get(f"RUNPOD_TCP_PORT_{grpc_port}") if grpc_port else None
        if grpc_mapped:
            values["runpod_grpc_tcp_port"] = _parse("runpod_grpc_tcp_port", f"RUNPOD_TCP_PORT_{grpc_port}",
                                                    grpc_mapped)
        settings = cls(**values)
        for name in ("ws_port", "lb_port", "lb_health_port"):
            if not 0 <= getattr(settings, name) <= 65535:
                raise InputError(f"{_ENV_NAMES[name]} must be a TCP port number (0 picks a free one)")
        if not 0 <= settings.grpc_port <= 65535:
            raise InputError("PARAKEET_GRPC_PORT must be a TCP port number (0 turns the gRPC face off)")
        for name in ("max_batch", "concurrency", "max_download_bytes", "ws_max_sessions"):
            value = getattr(settings, name)
            if value is not None and value < 1:
                raise InputError(f"{_ENV_NAMES[name]} must be at least 1")
        for name in ("batch_wait_ms", "chunk_overlap_s", "full_attention_max_s", "cpu_threads",
                     "stream_step_budget_ms", "stream_early_final_s"):
            value = getattr(settings, name)
            if value is not None and value < 0:
                raise InputError(f"{_ENV_NAMES[name]} must not be negative")
        for name in ("chunk_s", "max_audio_s", "download_timeout_s", "ws_idle_timeout_s", "ws_max_session_s"):
            value = getattr(settings, name)
            if value is not None and value <= 0:
                raise InputError(f"{_ENV_NAMES[name]} must be positive")
        return settings


_ENV_NAMES = {
    "model": "PARAKEET_MODEL",
    "model_dir": "PARAKEET_MODEL_DIR",
    "runpod_volume": "RUNPOD_VOLUME",
    "device": "PARAKEET_DEVICE",
    "dtype": "PARAKEET_DTYPE",
    "warmup": "PARAKEET_WARMUP",
    "cpu_threads": "PARAKEET_CPU_THREADS",
    "max_batch": "PARAKEET_MAX_BATCH",
    "batch_wait_ms": "PARAKEET_BATCH_WAIT_MS",
    "full_attention_max_s": "PARAKEET_FULL_ATTENTION_MAX_S",
    "chunk_s": "PARAKEET_CHUNK_S",
    "chunk_overlap_s": "PARAKEET_CHUNK_OVERLAP_S",
    "concurrency": "PARAKEET_CONCURRENCY",
    "max_audio_s": "PARAKEET_MAX_AUDIO_S",
    "max_download_bytes": "PARAKEET_MAX_DOWNLOAD_BYTES",
    "download_timeout_s": "PARAKEET_DOWNLOAD_TIMEOUT_S",
    "allow_private_urls": "PARAKEET_ALLOW_PRIVATE_URLS",
    "job_audio_budget_s": "PARAKEET_JOB_AUDIO_BUDGET_S",
    "worker_audio_budget_s": "PARAKEET_WORKER_AUDIO_BUDGET_S",
    "audio_budget_wait_s": "PARAKEET_AUDIO_BUDGET_WAIT_S",
    "job_decode_concurrency": "PARAKEET_JOB_DECODE_CONCURRENCY",
    "shutdown_grace_s": "PARAKEET_SHUTDOWN_GRACE_S",
    "ws_host": "PARAKEET_WS_HOST",
    "ws_port": "PARAKEET_WS_PORT",
    "grpc_port": "PARAKEET_GRPC_PORT",
    "ws_max_sessions": "PARAKEET_WS_MAX_SESSIONS",
    "ws_idle_timeout_s": "PARAKEET_WS_IDLE_TIMEOUT_S",
    "ws_max_session_s": "PARAKEET_WS_MAX_SESSION_S",
    "api_token": "PARAKEET_API_TOKEN",
    "stream_left_s": "PARAKEET_STREAM_LEFT_S",
    "stream_chunk_s": "PARAKEET_STREAM_CHUNK_S",
    "stream_right_s": "PARAKEET_STREAM_RIGHT_S",
    "stream_step_budget_ms": "PARAKEET_STREAM_STEP_BUDGET_MS",
    "stream_final_pass_max_s": "PARAKEET_STREAM_FINAL_PASS_MAX_S",
    "stream_early_final_s": "PARAKEET_STREAM_EARLY_FINAL_S",
    "runpod_mode": "PARAKEET_RUNPOD_MODE",
    "lb_port": "PORT",
    "lb_health_port": "PORT_HEALTH",
    "runpod_public_ip": "RUNPOD_PUBLIC_IP",
    "log_format": "PARAKEET_LOG_FORMAT",
    "metrics_file": "PARAKEET_METRICS_FILE",
    "log_transcripts": "PARAKEET_LOG_TRANSCRIPTS",
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "bfloat16", "float16", "float32"),
    "log_format": ("auto", "json", "text"),
    "runpod_mode": ("queue", "lb"),
}


def _parse(name: str, var: str, raw: str) -> object:
    kind = str({f.name: f.type for f in fields(Settings)}[name]).removesuffix(" | None")
    if name in _CHOICES:
        value = raw.strip().lower()
        if value not in _CHOICES[name]:
            raise InputError(f"{var}={raw!r} is not valid: use one of {', '.join(_CHOICES[name])}")
        return value
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{var}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off")
    if kind == "float":
        try:
            number = float(raw)
        except ValueError:
            raise InputError(f"{var}={raw!r} is not a number") from None
        if not math.isfinite(number):
            raise InputError(f"{var}={raw!r} is not a finite number")
        return number
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"{var}={raw!r} is not an integer") from None
    if kind == "Path":
        return Path(raw).expanduser()
    return raw.strip()
