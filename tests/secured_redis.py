"""Redis servers of a test's own that ask for a password, an ACL user or TLS, on free ports."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.runtime import binaries, probes
from services.runtime.process import ServerNotReady, ServerProcess
from tests.processes import free_port

PASSWORD = "s3cret-default"
USER, USER_PASSWORD = "engine", "s3cret-engine"


def _argv(binary: Path, port: int, workdir: Path) -> list[str]:
    # Two loopback addresses: the TLS certificate names the first only, so the second tests hostname checks.
    return [str(binary), "--port", str(port), "--bind", "127.0.0.1", "127.0.0.2", "--save", "", "--appendonly", "no",
            "--dir", str(workdir), "--daemonize", "no", "--loglevel", "notice",
            # The default user needs the password; an ACL user of its own has every right on every key.
            "--requirepass", PASSWORD, "--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"]


@contextlib.contextmanager
def auth_server(workdir: Path) -> Iterator[int]:
    """The engine's shipped server with a password and an ACL user; yields its port."""
    port = free_port()
    url = f"redis://{USER}:{USER_PASSWORD}@127.0.0.1:{port}/0"  # readiness authenticates, as the services will
    with ServerProcess("redis-auth", _argv(binaries.redis_server(), port, workdir), url, probes.redis_answers,
                       workdir / "redis-auth.log", signal.SIGTERM):
        yield port


@dataclass(frozen=True)
class TlsServer:
    port: int
    ca: Path
    binary: Path
    cert: Path  # signed by `ca`, for 127.0.0.1; good as a client certificate too
    key: Path


def _certificates(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 and localhost."""
    ca_key, ca, key, csr, cert = (workdir / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = workdir / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
            "-days", "1", "-subj", "/CN=test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return ca, cert, key


def _tls_candidates() -> list[Path]:
    found = [binaries.redis_server()]
    system = shutil.which("redis-server")
    if system is not None and Path(system) not in found:
        found.append(Path(system))
    return found


@contextlib.contextmanager
def tls_server(workdir: Path, client_certificates: bool = False) -> Iterator[TlsServer]:
    """A server speaking TLS only (and asking for the password): the shipped one if built with TLS, else a system
    redis-server that is; the test is skipped when neither is. `client_certificates`: it asks for one."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI to make a throwaway CA")
    ca, cert, key = _certificates(workdir)
    refused: list[str] = []
    for n, binary in enumerate(_tls_candidates()):
        port = free_port()
        argv = [*_argv(binary, 0, workdir), "--tls-port", str(port), "--tls-cert-file", str(cert),
                "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                "--tls-auth-clients", "yes" if client_certificates else "no"]
        url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={ca}"
        if client_certificates:
            url += f"&ssl_certfile={cert}&ssl_keyfile={key}"
        log = workdir / f"redis-tls-{n}.log"
        server = ServerProcess("redis-tls", argv, url, probes.redis_answers, log, signal.SIGTERM)
        try:
            server.start(timeout_s=15)
        except ServerNotReady:
            if "TLS support" not in log.read_text():
                raise
            refused.append(str(binary))
            continue
        try:
            yield TlsServer(port, ca, binary, cert, key)
        finally:
            server.stop()
        return
    pytest.skip(f"no Redis server here was built with TLS (tried {', '.join(refused)}: 'Failed finding TLS support')")
