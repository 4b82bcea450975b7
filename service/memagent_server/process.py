"""`memagent serve` as a child process on a free loopback port (benchmarks, crash tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class ServerProcess:
    """Starts the server with `--port 0 --metrics-port -1` plus `options`, and `--tokens tokens`
    or else `--no-auth`; its JSON logs go to `log`, where the "serving" line gives the address.
    `model` None serves the embedded default."""

    def __init__(
        self,
        data_dir: Path,
        log: Path,
        *options: str,
        model: str | None = "random:tiny",
        tokens: Path | None = None,
        timeout: float = 180,
    ):
        self.log = Path(log)
        auth = ["--tokens", str(tokens)] if tokens else ["--no-auth"]
        command = [
            sys.executable, "-c", "from memagent.cli import main; main()", "serve",
            *(["--model", model] if model else []), *auth, "--port", "0", "--metrics-port", "-1",
            "--data-dir", str(data_dir), *options,
        ]  # fmt: skip
        with open(self.log, "w") as stderr:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(command, stderr=stderr, stdout=subprocess.DEVNULL)
        self.address = self._wait_for_address(timeout)

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("{") and json.loads(line).get("message") == "serving":
                    return json.loads(line)["address"]
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.process.kill()
        raise TimeoutError(f"the server did not start in {timeout:.0f} s:\n{self.log.read_text()}")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")]

    def stop(self) -> int:
        """Graceful shutdown (SIGTERM: drain and snapshot); returns the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)
