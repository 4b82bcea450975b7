"""The checked-in generated code is what proto/generate.sh makes from the .proto today."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["memagent_pb2.py", "memagent_pb2.pyi", "memagent_pb2_grpc.py"]


@pytest.mark.timeout(60)
def test_generated_code_is_up_to_date(tmp_path):
    # The tools come from this interpreter's environment, never from whatever is on PATH.
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["sh", str(ROOT / "proto" / "generate.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / "memagent" / "v1" / name).read_text()
        assert fresh == (ROOT / "memagent" / "v1" / name).read_text(), f"{name} is stale: run proto/generate.sh"
