"""One settings object, read from the environment in one place.

Every module takes its configuration as parameters; only :meth:`Settings.from_env` reads ``os.environ``.
Invalid values raise :class:`errors.InputError` naming the variable and what it accepts, at startup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

from errors import InputError

DEFAULT_MODEL = "nvidia/parakeet-tdt-0.6b-v3"

DeviceChoice = Literal["auto", "cpu", "cuda"]
DtypeChoice = Literal["auto", "bfloat16", "float16", "float32"]


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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for name, var in _ENV_NAMES.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _parse(name, var, raw)
        return cls(**values)  # type: ignore[arg-type]


_ENV_NAMES = {
    "model": "PARAKEET_MODEL",
    "model_dir": "PARAKEET_MODEL_DIR",
    "runpod_volume": "RUNPOD_VOLUME",
    "device": "PARAKEET_DEVICE",
    "dtype": "PARAKEET_DTYPE",
    "warmup": "PARAKEET_WARMUP",
    "cpu_threads": "PARAKEET_CPU_THREADS",
}
_CHOICES: dict[str, tuple[str, ...]] = {
    "device": ("auto", "cpu", "cuda"),
    "dtype": ("auto", "bfloat16", "float16", "float32"),
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
    if kind in ("int", int):
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"{var}={raw!r} is not an integer") from None
    if kind in ("Path", Path):
        return Path(raw).expanduser()
    return raw.strip()
