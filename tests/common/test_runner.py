"""The service runner: signals set the stop event, work is drained or cancelled, HTTP servers stop gracefully."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.common.runner import (
    CONFIG_ERROR_EXIT,
    START_FAILED_EXIT,
    Server,
    ServerFailed,
    cancel_on_stop,
    serve_until_signalled,
)
from tests.processes import REPO_ROOT, free_port


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_signal_sets_stop_and_serve_returns_after_its_drain(sig: signal.Signals) -> None:
    steps: list[str] = []

    async def serve(settings: str, stop: asyncio.Event) -> None:
        steps.append(settings)
        os.kill(os.getpid(), sig)
        await stop.wait()
        await asyncio.sleep(0.05)  # the batch in hand
        steps.append("drained")

    await asyncio.wait_for(serve_until_signalled(serve, "started"), 5)
    assert steps == ["started", "drained"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers are the runner's only while it runs


async def test_cancel_on_stop_calls_on_stop_then_cancels_the_work() -> None:
    stop = asyncio.Event()
    seen: list[str] = []

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    asyncio.get_running_loop().call_later(0.05, stop.set)
    await asyncio.wait_for(cancel_on_stop(stop, work(), on_stop=lambda: seen.append("on_stop")), 5)
    assert seen == ["on_stop", "cancelled"]


async def test_cancel_on_stop_returns_or_raises_with_work_that_ends_by_itself() -> None:
    stop = asyncio.Event()
    await cancel_on_stop(stop, asyncio.sleep(0))

    async def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        await cancel_on_stop(stop, broken())


def _app() -> Starlette:
    async def slow(_: Request) -> PlainTextResponse:
        await asyncio.sleep(0.3)
        return PlainTextResponse("done")

    return Starlette(routes=[Route("/slow", slow)])


async def test_server_answers_the_request_in_hand_before_it_stops() -> None:
    port = free_port()
    server = Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, loop="none", log_level="warning",
                                   lifespan="off"))
    stop = asyncio.Event()
    serving = asyncio.create_task(server.serve_until(stop))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        while not server.started:
            await asyncio.sleep(0.01)
        request = asyncio.create_task(client.get("/slow"))
        await asyncio.sleep(0.1)
        stop.set()
        response = await request
    assert (response.status_code, response.text) == (200, "done")
    await asyncio.wait_for(serving, 5)
    with socket.socket() as probe:  # nothing listens any more
        assert probe.connect_ex(("127.0.0.1", port)) != 0


async def test_server_start_fails_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(uvicorn.Config(_app(), host="127.0.0.1", port=port, loop="none", log_level="critical",
                                       lifespan="off"))
        with pytest.raises(ServerFailed, match=f"cannot serve on 127.0.0.1:{port}"):
            await server.start()


def test_a_taken_port_is_one_json_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "INGEST_PORT": str(taken.getsockname()[1])}
        done = subprocess.run([sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, capture_output=True,
                              env=env, timeout=30)
    assert done.returncode == START_FAILED_EXIT, done.stderr
    # uvicorn's own line about the bind error is in its own format (ingest keeps uvicorn's log config).
    lines = [json.loads(text) for text in done.stderr.decode().splitlines() if text.startswith("{")]
    assert [line["event"] for line in lines if line.get("event") in ("start", "start_failed")] == [
        "start", "start_failed"]


@pytest.mark.parametrize(("service", "env", "names"), [
    ("ingest", {"INGEST_PORT": "http"}, "INGEST_PORT='http'"),
    ("matcher", {"MATCHER_BLOCK_MS": "20000"}, "MATCHER_BLOCK_MS=20000"),
    ("persister", {"PERSISTER_BLOCK_MS": "9001"}, "PERSISTER_BLOCK_MS=9001"),
    ("broadcaster", {"BROADCASTER_READ_BLOCK_MS": "0"}, "BROADCASTER_READ_BLOCK_MS='0'"),
])
def test_a_configuration_error_is_one_json_line_and_exit_2(service: str, env: dict[str, str], names: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=REPO_ROOT, capture_output=True,
                          env={**os.environ, **env}, timeout=30)
    assert done.returncode == CONFIG_ERROR_EXIT, done.stderr
    [line] = [json.loads(text) for text in done.stderr.decode().splitlines()]
    assert (line["service"], line["level"], line["event"]) == (service, "error", "config_error")
    assert names in line["msg"]


def test_log_file_gets_the_json_lines_and_stderr_stays_empty(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "ingest.log"
    done = subprocess.run([sys.executable, "-m", "services.ingest"], cwd=REPO_ROOT, capture_output=True,
                          env={**os.environ, "INGEST_PORT": "http", "LOG_FILE": str(log)}, timeout=30)
    assert done.returncode == CONFIG_ERROR_EXIT and done.stderr == b""
    [line] = [json.loads(text) for text in log.read_text().splitlines()]
    assert (line["service"], line["event"]) == ("ingest", "config_error")


def test_a_log_file_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "services.matcher"], cwd=REPO_ROOT, capture_output=True,
                          env={**os.environ, "LOG_FILE": str(tmp_path)}, timeout=30)  # a directory
    assert done.returncode == CONFIG_ERROR_EXIT, done.stderr
    [line] = [json.loads(text) for text in done.stderr.decode().splitlines()]
    assert line["event"] == "config_error" and str(tmp_path) in line["msg"]
