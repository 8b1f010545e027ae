"""Download a Hugging Face model's ``.nemo`` into the image at build time (Dockerfile ``--build-arg MODEL_ID=...``).

    python scripts/bake_model.py nvidia/parakeet-tdt-0.6b-v3 /models [--revision REV]

It lands as ``<models_dir>/<org>--<name>/<file>.nemo``, one of the layouts ``parakeet_worker.model.loader`` looks for under
``PARAKEET_MODEL_DIR`` (default ``/models``) when ``PARAKEET_MODEL`` names that id. Only ``*.nemo`` is fetched.
A token for gated or private repositories comes from ``HF_TOKEN``, as huggingface_hub reads it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

Downloader = Callable[..., str]


def bake_dir(models_dir: Path, model_id: str) -> Path:
    """Where ``model_id`` goes under ``models_dir`` (``org--name``, as ``parakeet_worker.model.loader._dir_nemo`` expects)."""
    return models_dir / model_id.replace("/", "--")


def bake(model_id: str, models_dir: Path, *, revision: str | None = None,
         download: Downloader | None = None) -> Path:
    """Fetch ``model_id``'s ``.nemo`` into :func:`bake_dir`; return its path. Exactly one ``.nemo`` must come."""
    if model_id.count("/") != 1 or model_id.endswith(".nemo"):
        raise SystemExit(f"MODEL_ID must be a Hugging Face id such as nvidia/parakeet-tdt-0.6b-v3, got {model_id!r}")
    if download is None:
        from huggingface_hub import snapshot_download

        download = snapshot_download
    target = bake_dir(models_dir, model_id)
    target.mkdir(parents=True, exist_ok=True)
    download(repo_id=model_id, revision=revision, local_dir=str(target), allow_patterns=["*.nemo"])
    found = sorted(target.glob("*.nemo"))
    if len(found) != 1:
        raise SystemExit(f"{model_id}: expected one .nemo file in the repository, found {len(found)} "
                         f"({', '.join(p.name for p in found) or 'none'}); is it a NeMo model?")
    return found[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_id", help="Hugging Face id, e.g. nvidia/parakeet-tdt-0.6b-v3")
    parser.add_argument("models_dir", type=Path, help="the image's PARAKEET_MODEL_DIR, e.g. /models")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    args = parser.parse_args(argv)
    path = bake(args.model_id, args.models_dir, revision=args.revision or None)
    print(f"baked {args.model_id} -> {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
