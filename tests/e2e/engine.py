"""The whole engine as `make run` starts it, on ports, a key prefix and a database of the test's own."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from services.common.keys import MATCHER_GROUP, PERSISTER_GROUP, instrument_keys
from services.common.redis_conn import AnyRedis
from tests.processes import REPO_ROOT, free_port, reserve


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports (persister worker N listens on base + N - 1)."""
    for _ in range(200):
        base = free_port()
        ports = range(base, base + count)
        try:
            for port in ports[1:]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        if reserve(ports[1:]):
            return base
    raise RuntimeError("no block of free ports")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def terminal_signals() -> None:
    """In the child: Ctrl-C, Ctrl-\\ and hangup as a terminal delivers them. A test run started in the
    background of a non-interactive shell (nohup, `cmd &`) inherits SIGINT, SIGQUIT and SIGHUP ignored, and
    bash cannot trap a signal ignored on entry: make run's Ctrl-C handling would never run."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


class RunningEngine:
    """`make run` in its own process group; stop() sends SIGINT to the group as Ctrl-C would."""

    def __init__(self, env: dict[str, str], run_dir: Path) -> None:
        self.env = env
        self.run_dir = run_dir
        self.ingest = f"http://127.0.0.1:{env['INGEST_PORT']}"
        self.matcher_metrics = f"http://127.0.0.1:{env['MATCHER_METRICS_PORT']}"
        self.persister_base = int(env["PERSISTER_METRICS_PORT"])
        self.log = run_dir / "make-run.log"
        self.process: subprocess.Popen[bytes] | None = None

    def persister_metrics(self, worker: int = 1) -> str:
        return f"http://127.0.0.1:{self.persister_base + worker - 1}"

    def start(self, timeout: float = 60) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(["make", "-s", "run"], cwd=REPO_ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=terminal_signals)
        self.wait_until(lambda: http_ok(f"{self.ingest}/readyz") and http_ok(f"{self.matcher_metrics}/healthz")
                        and http_ok(f"{self.persister_metrics()}/healthz"), timeout, "engine ready")

    def wait_until(self, condition: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"make run exited {self.process.returncode}: {self.log.read_text()}")
            if condition():  # type: ignore[operator]
                return
            time.sleep(0.1)
        raise AssertionError(f"not {what} after {timeout}s: {self.log.read_text()[-4000:]}")

    @property
    def control_dir(self) -> Path:
        """Where run.sh puts the process manager's sockets by default."""
        return self.run_dir / "control"

    def circusctl(self, *args: str) -> str:
        endpoint = f"ipc://{self.control_dir / 'circus.sock'}"
        result = subprocess.run([str(REPO_ROOT / ".venv/bin/circusctl"), "--endpoint", endpoint, "--timeout", "15",
                                 *args], capture_output=True, text=True, check=True)
        return result.stdout.strip()

    def pids(self, watcher: str) -> list[int]:
        listed = self.circusctl("list", watcher)
        return [int(p) for p in listed.replace(",", " ").split() if p.isdigit()]

    def run_make(self, *target: str) -> subprocess.CompletedProcess[str]:
        """`make -s <target>` in the engine's environment, whatever its exit code."""
        return subprocess.run(["make", "-s", *target], cwd=REPO_ROOT, env=self.env, capture_output=True, text=True,
                              timeout=60)

    def make(self, *target: str) -> str:
        result = self.run_make(*target)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the whole process group; the exit code of make. A stop that does not end within
        `timeout` (the services' graceful timeouts are 10-15 s) fails with what make run and each service
        logged, so the next occurrence says where it hung."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logs = [self.log, *sorted((self.run_dir / "logs").glob("*.log"))]
            tails = "\n".join(f"--- {path.name}\n{path.read_text()[-3000:]}" for path in logs if path.is_file())
            raise AssertionError(f"make run still running {timeout}s after Ctrl-C\n{tails}") from None

    def wait_gone(self, pids: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)

    def kill_group(self) -> None:
        """Teardown: stop circus and every worker it started, whatever state the test left them in.

        circus gives its workers their own process groups, so signalling make's group alone would
        leave them running: their pids are collected first and killed if the graceful stop fails.
        """
        if self.process is None or self.process.poll() is not None:
            return
        workers: list[int] = []
        for watcher in ("ingest", "matcher", "persister", "broadcaster", "redis", "postgres"):
            try:
                workers += self.pids(watcher)
            except (subprocess.SubprocessError, OSError):
                pass
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            # circusd runs in a session of its own (run.sh stops the services before the data servers):
            # without it, nothing would be left to respawn the processes killed below.
            pid_file = self.run_dir / "circusd.pid"
            if pid_file.is_file() and alive(int(pid_file.read_text())):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        self.wait_gone(workers, 15)
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_engine(env: dict[str, str], run_dir: Path, timeout: float = 60) -> Iterator[RunningEngine]:
    """`make run` started and ready; stopped (or killed) at the end whatever the test left behind."""
    engine = RunningEngine(env, run_dir)
    try:
        engine.start(timeout)  # an engine that never became ready is stopped too
        yield engine
    finally:
        engine.kill_group()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def engine_env(prefix: str, redis_url: str | None, database_url: str | None, run_dir: Path) -> dict[str, str]:
    """`make run`'s environment on free ports; a URL of None makes the engine run that server itself."""
    # No CIRCUS_ENDPOINT: the default (Unix sockets under the run directory) is what these tests run.
    unset = ("REDIS_URL", "DATABASE_URL", "CIRCUS_ENDPOINT", "CIRCUS_PUBSUB_ENDPOINT")
    env = {key: value for key, value in os.environ.items() if key not in unset}
    urls = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}
    return {
        **env,
        **{name: url for name, url in urls.items() if url is not None},
        "ENGINE_REDIS_PORT": str(free_port()),
        "ENGINE_PG_PORT": str(free_port()),
        "REDIS_KEY_PREFIX": prefix,
        "ENGINE_RUN_DIR": str(run_dir),
        "INGEST_PORT": str(free_port()),
        "BROADCASTER_PORT": str(free_port()),
        "MATCHER_METRICS_PORT": str(free_port()),
        "PERSISTER_METRICS_PORT": str(free_port_block(4)),
        "PERSISTER_SNAPSHOT_INTERVAL_S": "1",
    }


async def pipeline_drained(redis: AnyRedis, prefix: str, symbols: list[str]) -> bool:
    """Every command applied by the matcher, every trade and event written and acknowledged by the persister."""
    for symbol in symbols:
        keys = instrument_keys(prefix, symbol)
        for stream, group in ((keys.orders, MATCHER_GROUP), (keys.trades, PERSISTER_GROUP),
                              (keys.events, PERSISTER_GROUP)):
            infos = {info["name"].decode(): info for info in await redis.xinfo_groups(stream)}
            info = infos.get(group)
            if info is None or info.get("lag") is None or int(info["lag"]) or int(info["pending"]):
                return False
    return True
