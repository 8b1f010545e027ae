"""The layout the README describes holds: no import cycles, small modules, thin faces, the code in the package."""

from __future__ import annotations

from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
FACES = ("rp_handler.py", "asr_engine.py", "websocket_handler.py", "audio_utils.py", "client.py")
PACKAGES = ("parakeet_worker", "parakeet_client")
MAX_MODULE_LINES = 500
MAX_FACE_LINES = 40


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _product_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))


def test_the_runtime_import_graph_has_no_cycle() -> None:
    # Imports under `if TYPE_CHECKING:` are annotations only; what runs has no cycle.
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    ours = sorted(m for m in graph.modules if m.startswith(PACKAGES))
    cycles = [(a, b) for a in ours for b in graph.find_modules_directly_imported_by(a)
              if b.startswith(PACKAGES) and graph.chain_exists(importer=b, imported=a)]
    assert not cycles, f"import cycles: {cycles}"
    assert len(ours) > 40  # the graph really was built from the package


def test_no_product_module_is_over_500_lines() -> None:
    sizes = {str(p.relative_to(REPO)): _lines(p) for p in _product_modules()}
    assert sizes and not {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}


def test_the_faces_are_thin_and_the_code_lives_in_the_package() -> None:
    faces = {f: _lines(REPO / f) for f in FACES}
    assert all(n <= MAX_FACE_LINES for n in faces.values()), faces
    in_package = sum(_lines(p) for p in _product_modules())
    assert in_package / (in_package + sum(faces.values())) >= 0.9
    flat = {p.name for p in REPO.glob("*.py")}
    assert flat == set(FACES), f"product modules belong in a package, not the top level: {sorted(flat - set(FACES))}"
