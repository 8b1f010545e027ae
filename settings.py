"""One settings object, read from the environment in one place.

Every module takes its configuration as parameters; only :meth:`Settings.from_env` reads ``os.environ``.
Invalid values raise :class:`errors.InputError` naming the variable and what it accepts, at startup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from audio_utils import AudioLimits, S3Credentials
from errors import InputError

if TYPE_CHECKING:
    from asr_engine import EngineOptions

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"

DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "bfloat16", "float16", "float32"]
LogFormat = Literal["auto", "json", "text"]


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
    # Engine
    max_batch: int = 16  # PARAKEET_MAX_BATCH: requests in one forward pass
    batch_wait_ms: float = 5.0  # PARAKEET_BATCH_WAIT_MS: how long the engine collects requests for a batch
    full_attention_max_s: float = 0.0  # PARAKEET_FULL_ATTENTION_MAX_S: 0 = model card (24 min on 80 GB), scaled
    chunk_s: float = 60.0  # PARAKEET_CHUNK_S: default window for chunk_long_audio
    chunk_overlap_s: float = 5.0  # PARAKEET_CHUNK_OVERLAP_S
    # Jobs and audio
    concurrency: int = 4  # PARAKEET_CONCURRENCY: RunPod jobs held by one worker at once
    max_audio_s: float = 3 * 3600 + 60  # PARAKEET_MAX_AUDIO_S
    max_download_bytes: int = 1 << 30  # PARAKEET_MAX_DOWNLOAD_BYTES
    download_timeout_s: float = 60.0  # PARAKEET_DOWNLOAD_TIMEOUT_S
    allow_private_urls: bool = False  # PARAKEET_ALLOW_PRIVATE_URLS: allow loopback/private URL targets
    s3: S3Credentials | None = None  # S3_ACCESS_KEY, S3_SECRET_KEY, S3_ENDPOINT, S3_REGION
    # Real-time streaming (websocket_handler.py)
    ws_host: str = "0.0.0.0"  # PARAKEET_WS_HOST: interface the WebSocket server listens on
    ws_port: int = 8765  # PARAKEET_WS_PORT: expose it as a TCP port on RunPod
    ws_max_sessions: int = 32  # PARAKEET_WS_MAX_SESSIONS: more connections are refused with HTTP 503
    ws_idle_timeout_s: float = 30.0  # PARAKEET_WS_IDLE_TIMEOUT_S: no audio and no message ends a session
    ws_max_session_s: float = 3600.0  # PARAKEET_WS_MAX_SESSION_S: upper bound of one session
    stream_left_s: float = 4.0  # PARAKEET_STREAM_LEFT_S: encoder context before each chunk
    stream_chunk_s: float = 0.96  # PARAKEET_STREAM_CHUNK_S: audio committed per streaming step (80 ms multiple)
    stream_right_s: float = 0.96  # PARAKEET_STREAM_RIGHT_S: lookahead after each chunk (80 ms multiple)
    stream_step_budget_ms: float = 50.0  # PARAKEET_STREAM_STEP_BUDGET_MS: longest streaming forward; 0 = no split
    stream_final_pass_max_s: float = 20.0  # PARAKEET_STREAM_FINAL_PASS_MAX_S: offline final for utterances this long; 0 = off
    stream_early_final_s: float = 0.16  # PARAKEET_STREAM_EARLY_FINAL_S: pause that starts the final pass early; 0 = off
    runpod_public_ip: str = ""  # RUNPOD_PUBLIC_IP: set by RunPod when a TCP port is exposed
    runpod_tcp_port: int = 0  # RUNPOD_TCP_PORT_<ws_port>: the public port RunPod maps to ws_port
    # Observability
    log_format: LogFormat = "auto"  # PARAKEET_LOG_FORMAT: auto = JSON lines on RunPod, text elsewhere
    metrics_file: str = "/tmp/parakeet-metrics.jsonl"  # PARAKEET_METRICS_FILE: per-request JSON lines; "off" disables

    def metrics_path(self) -> Path | None:
        return None if self.metrics_file.strip().lower() in ("off", "none", "0", "") else Path(self.metrics_file)

    def engine_options(self) -> EngineOptions:
        from asr_engine import EngineOptions
        from streaming import StreamingConfig

        return EngineOptions(
            max_batch=self.max_batch, batch_wait_ms=self.batch_wait_ms,
            full_attention_max_s=self.full_attention_max_s or None, max_audio_s=self.max_audio_s,
            default_chunk_s=self.chunk_s, default_overlap_s=self.chunk_overlap_s,
            streaming=StreamingConfig(left_s=self.stream_left_s, chunk_s=self.stream_chunk_s,
                                      right_s=self.stream_right_s, final_pass_max_s=self.stream_final_pass_max_s),
            stream_step_budget_s=self.stream_step_budget_ms / 1000,
            stream_early_final_s=self.stream_early_final_s,
        )

    def audio_limits(self) -> AudioLimits:
        return AudioLimits(
            max_bytes=self.max_download_bytes, max_duration_s=self.max_audio_s,
            download_timeout_s=self.download_timeout_s, allow_private_urls=self.allow_private_urls,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
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
        settings = cls(**values)  # type: ignore[arg-type]
        if not 0 <= settings.ws_port <= 65535:
            raise InputError("PARAKEET_WS_PORT must be a TCP port number (0 picks a free one)")
        try:
            settings.engine_options()
        except ValueError as exc:
            raise InputError(f"streaming settings (PARAKEET_STREAM_*): {exc}") from None
        for name in ("max_batch", "concurrency", "max_download_bytes", "ws_max_sessions"):
            if getattr(settings, name) < 1:
                raise InputError(f"{_ENV_NAMES[name]} must be at least 1")
        for name in ("batch_wait_ms", "chunk_overlap_s", "full_attention_max_s", "cpu_threads",
                     "stream_step_budget_ms", "stream_early_final_s"):
            if getattr(settings, name) < 0:
                raise InputError(f"{_ENV_NAMES[name]} must not be negative")
        for name in ("chunk_s", "max_audio_s", "download_timeout_s", "ws_idle_timeout_s", "ws_max_session_s"):
            if getattr(settings, name) <= 0:
                raise InputError(f"{_ENV_NAMES[name]} must be positive")
        if settings.chunk_overlap_s >= settings.chunk_s / 2:
            raise InputError("PARAKEET_CHUNK_OVERLAP_S must be less than half of PARAKEET_CHUNK_S")
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
    "ws_host": "PARAKEET_WS_HOST",
    "ws_port": "PARAKEET_WS_PORT",
    "ws_max_sessions": "PARAKEET_WS_MAX_SESSIONS",
    "ws_idle_timeout_s": "PARAKEET_WS_IDLE_TIMEOUT_S",
    "ws_max_session_s": "PARAKEET_WS_MAX_SESSION_S",
    "stream_left_s": "PARAKEET_STREAM_LEFT_S",
    "stream_chunk_s": "PARAKEET_STREAM_CHUNK_S",
    "stream_right_s": "PARAKEET_STREAM_RIGHT_S",
    "stream_step_budget_ms": "PARAKEET_STREAM_STEP_BUDGET_MS",
    "stream_final_pass_max_s": "PARAKEET_STREAM_FINAL_PASS_MAX_S",
    "stream_early_final_s": "PARAKEET_STREAM_EARLY_FINAL_S",
    "runpod_public_ip": "RUNPOD_PUBLIC_IP",
    "log_format": "PARAKEET_LOG_FORMAT",
    "metrics_file": "PARAKEET_METRICS_FILE",
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "bfloat16", "float16", "float32"),
    "log_format": ("auto", "json", "text"),
}


def _parse(name: str, var: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if name in _CHOICES:
        value = raw.strip().lower()
        if value not in _CHOICES[name]:
            raise InputError(f"{var}={raw!r} is not valid: use one of {', '.join(_CHOICES[name])}")
        return value
    if kind in ("bool", bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InputError(f"{var}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off")
    if kind in ("float", float):
        try:
            value = float(raw)
        except ValueError:
            raise InputError(f"{var}={raw!r} is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError(f"{var}={raw!r} is not a finite number")
        return value
    if kind in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"{var}={raw!r} is not an integer") from None
    if kind in ("Path", Path):
        return Path(raw).expanduser()
    return raw.strip()
