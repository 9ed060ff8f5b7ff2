"""Every bench imports without privileges (root, bcc, a lab) and has a `main` to run, so a bench
cannot rot silently when the code it measures changes: a renamed function it imports at the top
fails here. What a bench needs to run (root, bcc, routers) it loads inside main()."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
BENCHES = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_there_are_benches():
    assert BENCHES, f"no bench/*.py under {BENCH}"


@pytest.mark.parametrize("path", BENCHES, ids=[p.stem for p in BENCHES])
def test_bench_imports_and_has_main(path: Path):
    name = f"_moor_bench_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # dataclasses and the like look their module up by name
    try:
        spec.loader.exec_module(module)  # runs the top level only: `if __name__ == "__main__"` stays off
        assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    finally:
        sys.modules.pop(name, None)
