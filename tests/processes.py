"""Start engine services as real subprocesses for tests, on free ports, with the test's own key prefix."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


# Ports handed out by this test process: the kernel may offer the same ephemeral port to two calls made
# one after the other (each socket is closed before the service binds it), and two services of one
# engine must never be given the same port.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A port nothing listens on now, and that this test process has not handed out before."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def reserve(ports: range) -> bool:
    """Claim a block of ports for this test process; False if any was handed out already."""
    if any(p in _GIVEN for p in ports):
        return False
    _GIVEN.update(ports)
    return True


def docker_engine() -> bool:
    """A Docker engine answers (`docker --version` answers without one; `docker info` needs one)."""
    docker = shutil.which("docker")
    return docker is not None and subprocess.run([docker, "info"], capture_output=True).returncode == 0


class Service:
    """One `python -m services.<name>` process."""

    def __init__(self, name: str, env: dict[str, str], health_url: str, log_path: Path) -> None:
        self.name = name
        self.env = {**os.environ, **env}
        self.health_url = health_url
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> Service:
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen([sys.executable, "-m", f"services.{self.name}"], env=self.env,
                                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not healthy after {timeout}s: {self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no chance to finish anything."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise
