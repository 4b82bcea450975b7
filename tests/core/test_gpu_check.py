"""bench/gpu_check.sh, the one command a lent GPU runs, works end to end in its CPU dry run."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_stage_to_out(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in summary] == [["probe", "rc=0"], ["tests", "rc=0"], ["engine_bench", "rc=0"]]
    log = (tmp_path / "gpu_check.log").read_text()
    for expected in ("torch", "steady-state", "new_cache batch 32", "prefill 300 tokens", "attention share",
                     "memories, one batch-1 stream each", "agree between fp32", "decode, batch 2"):
        assert expected in log
    assert "Traceback" not in log
