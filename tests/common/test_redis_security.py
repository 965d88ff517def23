"""Passwords, ACL users and TLS from REDIS_URL, in redis-py's connect() and in the ingest's command batcher alike."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.exceptions import AuthenticationError
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.redis_batch import CommandBatcher
from services.common.redis_conn import connect
from tests.secured_redis import PASSWORD, USER, USER_PASSWORD, TlsServer, auth_server, tls_server


@pytest.fixture(scope="module")
def auth_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with auth_server(tmp_path_factory.mktemp("redis-auth")) as port:
        yield port


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    with tls_server(tmp_path_factory.mktemp("redis-tls")) as server:
        yield server


@contextlib.asynccontextmanager
async def both_connections(url: str, **options: Any) -> AsyncIterator[tuple[Any, CommandBatcher]]:
    """connect()'s client and the ingest's batcher built from it, both closed afterwards."""
    redis = connect(url, **options)
    batcher = CommandBatcher(redis)
    try:
        yield redis, batcher
    finally:
        await batcher.close()
        await redis.aclose()


async def whoami_both_ways(url: str) -> tuple[bytes, bytes]:
    """ACL WHOAMI through connect() and through a batcher built from it; SELECT checked by a key in db 3."""
    async with both_connections(url) as (redis, batcher):
        through_batcher = await batcher.execute("ACL", "WHOAMI")
        await batcher.execute("SET", "written-by-batcher", "1")
        assert await redis.get("written-by-batcher") == b"1"
        return await redis.execute_command("ACL", "WHOAMI"), through_batcher


@pytest.mark.parametrize(("userinfo", "user"), [(f"{USER}:{USER_PASSWORD}", b"engine"), (f":{PASSWORD}", b"default")])
async def test_url_credentials_authenticate_both_connections(auth_port: int, userinfo: str, user: bytes) -> None:
    assert await whoami_both_ways(f"redis://{userinfo}@127.0.0.1:{auth_port}/3") == (user, user)


@pytest.mark.parametrize("userinfo", [f"{USER}:wrong", ":wrong", ""])
async def test_wrong_or_missing_password_is_an_authentication_error(auth_port: int, userinfo: str) -> None:
    url = f"redis://{userinfo}@127.0.0.1:{auth_port}/0" if userinfo else f"redis://127.0.0.1:{auth_port}/0"
    async with both_connections(url) as (redis, batcher):
        with pytest.raises(AuthenticationError):
            await redis.ping()
        # A connection error like any other to the batcher's callers (ingest answers 503), never a reply.
        with pytest.raises(RedisConnectionError, match=r"(?i)auth|password"):
            await batcher.execute("PING")


async def test_tls_with_the_ca_verifies_the_server(tls: TlsServer) -> None:
    url = f"rediss://{USER}:{USER_PASSWORD}@127.0.0.1:{tls.port}/3?ssl_ca_certs={tls.ca}"
    assert await whoami_both_ways(url) == (b"engine", b"engine")


async def test_tls_verification_can_be_turned_off(tls: TlsServer) -> None:
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls.port}/0?ssl_cert_reqs=none"
    assert await whoami_both_ways(url) == (b"default", b"default")


async def test_tls_verifies_by_default(tls: TlsServer) -> None:
    # The throwaway CA is not in the system's trust store: both connections refuse the server.
    async with both_connections(f"rediss://:{PASSWORD}@127.0.0.1:{tls.port}/0") as (redis, batcher):
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate verify failed"):
            await redis.ping()
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate verify failed"):
            await batcher.execute("PING")


async def test_plain_tcp_to_a_tls_port_fails_cleanly(tls: TlsServer) -> None:
    async with both_connections(f"redis://:{PASSWORD}@127.0.0.1:{tls.port}/0", socket_timeout=2) as (_, batcher):
        with pytest.raises(RedisConnectionError):
            await batcher.execute("PING")


async def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    with tls_server(tmp_path, client_certificates=True) as server:
        base = f"rediss://:{PASSWORD}@localhost:{server.port}/0?ssl_ca_certs={server.ca}"
        with_cert = f"{base}&ssl_certfile={server.cert}&ssl_keyfile={server.key}"
        assert await whoami_both_ways(with_cert) == (b"default", b"default")
        async with both_connections(base) as (_, batcher):
            with pytest.raises(RedisConnectionError):
                await batcher.execute("PING")


async def test_tls_hostname_check_can_be_turned_off(tls: TlsServer) -> None:
    # The certificate names 127.0.0.1 and localhost, not 127.0.0.2 (also loopback): checked unless turned off.
    url = f"rediss://:{PASSWORD}@127.0.0.2:{tls.port}/0?ssl_ca_certs={tls.ca}"
    redis = connect(url)
    try:
        with pytest.raises(RedisConnectionError, match=r"(?i)certificate verify failed|hostname"):
            await redis.ping()
    finally:
        await redis.aclose()
    assert await whoami_both_ways(f"{url}&ssl_check_hostname=false") == (b"default", b"default")
