"""The committed stubs in common/api/ are exactly what scripts/genproto.py makes."""
from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _genproto():
    spec = importlib.util.spec_from_file_location("genproto", ROOT / "scripts" / "genproto.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_stubs_match_committed(tmp_path: pathlib.Path) -> None:
    written = _genproto().generate(tmp_path)
    assert written, "genproto wrote nothing"
    committed = ROOT / "common" / "api"
    for path in written:
        assert (committed / path.name).read_bytes() == path.read_bytes(), (
            f"common/api/{path.name} is stale: run python scripts/genproto.py")
    expected = {p.name for p in written} | {"__init__.py"}
    extra = {p.name for p in committed.glob("*.py*")} - expected
    assert not extra, f"unexpected files in common/api: {extra}"
