"""Regenerate common/api/ from proto/ (run: python scripts/genproto.py).

protoc writes absolute imports (`from mfetch.v1 import tracker_pb2`) that
follow the proto package; we rewrite that one line so the stubs live inside
the `common.api` package. tests/test_proto.py reruns this into a temporary
folder and fails on any difference with the committed files.
"""
from __future__ import annotations

import pathlib
import re
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOS = ["mfetch/v1/tracker.proto"]


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    """Compile PROTOS into `out` (flat), returning the files written."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}", f"--pyi_out={tmp}",
                f"--grpc_python_out={tmp}", *PROTOS]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted(pathlib.Path(tmp).rglob("*.py*")):
            text = src.read_text()
            text = re.sub(r"^from mfetch\.v1 import (\w+)", r"from common.api import \1",
                          text, flags=re.MULTILINE)
            dst = out / src.name
            dst.write_text(text)
            written.append(dst)
        return written


if __name__ == "__main__":
    target = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "common" / "api"
    for path in generate(target):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
