"""Find and load the Parakeet model: local ``.nemo`` file, RunPod cached model, baked-in directory, or the hub.

Order (the first that exists wins):

1. ``PARAKEET_MODEL`` is a path to a ``.nemo`` file;
2. RunPod's cached-models mount: ``<RUNPOD_VOLUME>/huggingface-cache/hub/models--<org>--<name>/snapshots/<rev>/``;
3. a baked-in directory or network volume: ``<PARAKEET_MODEL_DIR>`` and ``<RUNPOD_VOLUME>/models``, each either
   in Hugging Face cache layout or holding ``<name>.nemo`` / ``<org>--<name>/*.nemo``;
4. the Hugging Face id itself, downloaded by NeMo (needs network access).

When nothing loads, :class:`errors.ModelLoadError` lists what was tried and how to point at a local file.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from parakeet_worker.config import Settings
from parakeet_worker.errors import ModelLoadError

logger = logging.getLogger(__name__)

SourceKind = Literal["nemo_file", "runpod_cache", "model_dir", "hub"]


@dataclass(frozen=True)
class ModelSource:
    kind: SourceKind
    location: str  # a file path, or the Hugging Face id for kind == "hub"
    name: str  # what responses report as the model


@dataclass(frozen=True)
class LoadedModel:
    model: Any  # nemo.collections.asr.models.ASRModel, in eval mode, weights frozen
    source: ModelSource
    device: torch.device
    dtype: torch.dtype
    load_seconds: float


def _hf_cache_nemo(hub_root: Path, hf_id: str) -> Path | None:
    """The ``.nemo`` of ``hf_id`` in a Hugging Face hub cache (``refs/main`` snapshot first, then the newest)."""
    repo_dir = hub_root / f"models--{hf_id.replace('/', '--')}"
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ordered: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        ordered.append(snapshots / ref.read_text().strip())
    ordered += sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in ordered:
        found = sorted(snap.glob("*.nemo"))
        if found:
            return found[0]
    return None


def _dir_nemo(root: Path, hf_id: str) -> Path | None:
    name = hf_id.rsplit("/", 1)[-1]
    for candidate in (root / f"{name}.nemo", *sorted((root / hf_id.replace("/", "--")).glob("*.nemo"))):
        if candidate.is_file():
            return candidate
    for hub_root in (root, root / "hub", root / "huggingface-cache" / "hub"):
        found = _hf_cache_nemo(hub_root, hf_id)
        if found is not None:
            return found
    return None


def resolve_model_source(settings: Settings) -> tuple[ModelSource, list[str]]:
    """The source to load, and the human-readable list of places looked at before it."""
    tried: list[str] = []
    spec = settings.model
    if spec.endswith(".nemo") or Path(spec).expanduser().is_file():
        path = Path(spec).expanduser()
        if path.is_file():
            return ModelSource("nemo_file", str(path.resolve()), path.stem), tried
        raise ModelLoadError(
            f"PARAKEET_MODEL={spec!r} looks like a local .nemo file but it does not exist; fix the path "
            "(the test model at tests/assets/parakeet-tdt-test.nemo works for a demo)"
        )
    cache_root = settings.runpod_volume / "huggingface-cache" / "hub"
    tried.append(f"RunPod cached model in {cache_root}")
    found = _hf_cache_nemo(cache_root, spec)
    if found is not None:
        return ModelSource("runpod_cache", str(found), spec), tried
    for root in (settings.model_dir, settings.runpod_volume / "models"):
        tried.append(f"model directory {root}")
        found = _dir_nemo(root, spec)
        if found is not None:
            return ModelSource("model_dir", str(found), spec), tried
    return ModelSource("hub", spec, spec), tried


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def choose_device(settings: Settings) -> torch.device:
    if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ModelLoadError("PARAKEET_DEVICE=cuda but torch sees no CUDA device; check the driver/CUDA image or use cpu")
        return torch.device("cuda")
    return torch.device("cpu")


def choose_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    if settings.dtype != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[settings.dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else torch.float32


def release_host_memory() -> None:
    """Give freed heap pages back to the OS (``restore_from`` leaves ~2x the weights resident otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        logger.debug("malloc_trim is not available on this platform")


def load_model(settings: Settings) -> LoadedModel:
    """Load, move and cast the model; leave it in eval mode with frozen weights."""
    from nemo.collections.asr.models import ASRModel

    source, tried = resolve_model_source(settings)
    device = choose_device(settings)
    dtype = choose_dtype(settings, device)
    started = time.monotonic()
    logger.info("loading model %s from %s (%s)", source.name, source.location, source.kind)
    try:
        if source.kind == "hub":
            model = ASRModel.from_pretrained(model_name=source.location, map_location=device)
        else:
            model = ASRModel.restore_from(restore_path=source.location, map_location=device)
    except Exception as exc:  # NeMo/HF raise many types here; all mean "this source did not load"
        places = "; ".join([*tried, f"{source.kind} {source.location}"])
        raise ModelLoadError(
            f"could not load model {settings.model!r} ({type(exc).__name__}: {exc}). Tried: {places}. "
            "Without network access to Hugging Face, set PARAKEET_MODEL to a local .nemo file "
            "(e.g. PARAKEET_MODEL=tests/assets/parakeet-tdt-test.nemo for a demo) or mount the model under "
            "PARAKEET_MODEL_DIR / RunPod cached models."
        ) from exc
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    # The feature extractor stays in float32 (STFT/log-mel precision); the networks take the chosen dtype.
    for module in (model.encoder, model.decoder, model.joint):
        module.to(device=device, dtype=dtype)
    model.preprocessor.to(device=device, dtype=torch.float32)
    release_host_memory()
    seconds = time.monotonic() - started
    logger.info("model %s ready on %s in %s after %.1f s", source.name, device, dtype, seconds)
    return LoadedModel(model=model, source=source, device=device, dtype=dtype, load_seconds=seconds)
