"""A local Redis Cluster of 3 masters for the scale-out tests (issue 17), from the engine's own server binary.

`redis_cluster` starts it once per session on free ports (client and cluster-bus ports both chosen), data in a
temporary directory, with `valkey-cli --cluster create` (or redis-cli: services/runtime/binaries.py picks what
the runtime runs), and stops it afterwards. `cluster_symbols` gives 3 instruments whose slots are on 3
different masters. `LocalCluster.move_slot` moves an instrument's slot as `--cluster reshard` does; its parts
(`begin_move`, `Move.migrate_keys`, `Move.finish`) let a test act while the slot is MIGRATING/IMPORTING.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.redis_conn import connect
from services.runtime.binaries import redis_cli, redis_server
from tests.processes import free_port

MASTERS = 3
# Candidates for cluster_symbols: with 3 masters made by --cluster create (slots 0-5460, 5461-10922,
# 10923-16383) DOT-USD, BTC-USD and SOL-USD are on three different masters.
CANDIDATE_SYMBOLS = ("DOT-USD", "BTC-USD", "SOL-USD", "ETH-USD", "ADA-USD", "XRP-USD", "LTC-USD", "DOGE-USD")
CLUSTER_INSTRUMENT = """
[[instrument]]
symbol = "{symbol}"
base = "{base}"
quote = "USD"
tick = "0.01"
lot = "0.00000001"
min_quantity = "0.00000001"
max_quantity = "1000"
max_price = "10000000"
price_band_pct = 0
market_protection_pct = 0
max_open_orders = 0
"""


class ClusterNotReady(RuntimeError):
    """The local cluster did not reach cluster_state:ok with one view of the slots in time."""


def slot_of(symbol: str) -> int:
    """The cluster slot of every key of `symbol` (they all carry the hash tag {symbol})."""
    return int(key_slot(symbol.encode()))


class Move:
    """One slot being moved: IMPORTING on the target and MIGRATING on the source until finish()."""

    def __init__(self, cluster: LocalCluster, slot: int, source: int, target: int) -> None:
        self.cluster = cluster
        self.slot = slot
        self.source = source
        self.target = target

    def migrate_keys(self, batch: int = 100) -> int:
        """MIGRATE every key of the slot still on the source to the target; how many moved."""
        moved = 0
        source = self.cluster.client(self.source)
        while keys := source.cluster("GETKEYSINSLOT", self.slot, batch):
            _command(source, "MIGRATE", "127.0.0.1", self.target, "", 0, 5000, "REPLACE", "KEYS", *keys)
            moved += len(keys)
        return moved

    def finish(self) -> None:
        """Move what is left, then give the slot to the target on every master (target first, as reshard does)."""
        self.migrate_keys()
        target_id = self.cluster.node_id(self.target)
        for port in [self.target, self.source, *(p for p in self.cluster.nodes if p not in (self.source, self.target))]:
            self.cluster.client(port).cluster("SETSLOT", self.slot, "NODE", target_id)
        self.cluster.wait_consistent()


class LocalCluster:
    """A running local cluster: `url` for REDIS_URL (its first node), `nodes` the masters' ports."""

    def __init__(self, nodes: list[int], processes: list[subprocess.Popen[bytes]], run_dir: Path) -> None:
        self.nodes = nodes
        self.processes = processes
        self.run_dir = run_dir
        self.url = f"redis://127.0.0.1:{nodes[0]}/0"
        self._clients = {port: SyncRedis(host="127.0.0.1", port=port, socket_timeout=10) for port in nodes}

    def client(self, port: int) -> SyncRedis:
        """A plain (not cluster-aware) client of one node, for admin commands."""
        return self._clients[port]

    def node_id(self, port: int) -> str:
        reply = self.client(port).cluster("MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def owner_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot` (as the first node sees it)."""
        for start, end, master, *_ in _command(self.client(self.nodes[0]), "CLUSTER SLOTS", NEVER_DECODE=True):
            if start <= slot <= end:
                return int(master[1])
        raise LookupError(f"slot {slot} is served by no master")

    def master_of(self, symbol: str) -> int:
        """The port of the master holding `symbol`'s slot."""
        return self.owner_of_slot(slot_of(symbol))

    def begin_move(self, symbol: str, to_port: int) -> Move:
        """Mark `symbol`'s slot IMPORTING on `to_port` and MIGRATING on its master; no key moved yet."""
        slot, source = slot_of(symbol), self.master_of(symbol)
        if source == to_port:
            raise ValueError(f"{symbol} (slot {slot}) is already on {to_port}")
        self.client(to_port).cluster("SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.client(source).cluster("SETSLOT", slot, "MIGRATING", self.node_id(to_port))
        return Move(self, slot, source, to_port)

    def move_slot(self, symbol: str, to_port: int) -> None:
        """Move `symbol`'s slot, keys included, to the master on `to_port`."""
        self.begin_move(symbol, to_port).finish()

    def spread_symbols(self, count: int = MASTERS) -> list[str]:
        """`count` symbols of CANDIDATE_SYMBOLS whose slots are on `count` different masters now."""
        chosen: dict[int, str] = {}
        for symbol in CANDIDATE_SYMBOLS:
            chosen.setdefault(self.master_of(symbol), symbol)
        if len(chosen) < count:
            raise LookupError(f"no {count} candidate symbols on {count} different masters: {chosen}")
        return list(chosen.values())[:count]

    def instruments_toml(self, symbols: list[str], path: Path) -> Path:
        """An instruments file listing `symbols` (BTC-USD's tick and lot, risk limits off); its path."""
        path.write_text("".join(CLUSTER_INSTRUMENT.format(symbol=s, base=s.split("-")[0]) for s in symbols))
        return path

    def wait_consistent(self, timeout_s: float = 15.0) -> None:
        """Until every master says cluster_state:ok and all agree on who serves each slot."""
        deadline = time.monotonic() + timeout_s
        views: list[object] = []
        while time.monotonic() < deadline:
            try:
                states = [self.client(p).cluster("INFO") for p in self.nodes]
                views = [_slot_view(self.client(p)) for p in self.nodes]
            except Exception:  # a node still starting or gossiping
                states = []
            if states and all(_state(s) == "ok" for s in states) and all(v == views[0] for v in views):
                return
            time.sleep(0.05)
        raise ClusterNotReady(f"cluster not consistent after {timeout_s}s: {views}; logs in {self.run_dir}")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _command(client: SyncRedis, *args: Any, **options: Any) -> Any:
    """A raw command (redis-py's execute_command is untyped)."""
    return client.execute_command(*args, **options)  # type: ignore[no-untyped-call]


def _state(info: object) -> str:
    if isinstance(info, dict):
        return str(info.get("cluster_state"))
    text = info.decode() if isinstance(info, bytes) else str(info)
    for line in text.splitlines():
        if line.startswith("cluster_state:"):
            return line.split(":", 1)[1].strip()
    return ""


def _slot_view(client: SyncRedis) -> list[tuple[int, int, int]]:
    reply = _command(client, "CLUSTER SLOTS", NEVER_DECODE=True)
    return sorted((int(start), int(end), int(master[1])) for start, end, master, *_ in reply)


def start_cluster(run_dir: Path, masters: int = MASTERS) -> LocalCluster:
    """Start `masters` cluster-enabled servers on free ports and join them (no replicas)."""
    server = str(redis_server())
    ports = [free_port() for _ in range(masters)]
    processes: list[subprocess.Popen[bytes]] = []
    for port in ports:
        node_dir = run_dir / str(port)
        node_dir.mkdir()
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000", "--dir", str(node_dir), "--save", "", "--appendonly", "no",
                "--protected-mode", "no", "--logfile", str(node_dir / "server.log")]
        processes.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    cluster = LocalCluster(ports, processes, run_dir)
    try:
        deadline = time.monotonic() + 15
        for port in ports:
            while True:
                try:
                    if cluster.client(port).ping():
                        break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        subprocess.run([str(redis_cli()), "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        cluster.wait_consistent()
    except BaseException:
        cluster.close()
        raise
    return cluster


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A local 3-master cluster for the whole session; tests that move slots leave every slot served."""
    # Not tmp_path_factory: another pytest session removes all but its newest base directories.
    run_dir = Path(tempfile.mkdtemp(prefix="engine-test-cluster-"))
    cluster = start_cluster(run_dir)
    yield cluster
    cluster.close()
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def cluster_symbols(redis_cluster: LocalCluster) -> list[str]:
    """3 instrument symbols whose slots are on 3 different masters (as the slots are now)."""
    return redis_cluster.spread_symbols()


@pytest.fixture
def cluster_prefix(redis_cluster: LocalCluster) -> Iterator[str]:
    """A REDIS_KEY_PREFIX of this test's own on the cluster; its keys are deleted from every master afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:10]}:"
    yield prefix
    for port in redis_cluster.nodes:
        node = redis_cluster.client(port)
        for key in list(node.scan_iter(match=f"{prefix}*", count=1000)):
            node.delete(key)


async def assert_not_resent(redis_cluster: LocalCluster, counter: str, symbol: str,
                            incr: Callable[[], Awaitable[Any]]) -> None:
    """A command the master received but had not run when its connection broke: the caller gets a
    ConnectionError, the command never runs (it is not sent again), and the next command reconnects."""
    master = redis_cluster.client(redis_cluster.master_of(symbol))
    master.set(counter, 0)
    assert await incr() == 1  # the caller's connection to the master is open
    master.client_pause(2000, all=False)  # writes wait: INCR is received, not run
    try:
        pending = asyncio.ensure_future(incr())
        await asyncio.sleep(0.2)
        blocked = [c for c in master.client_list() if "b" in c["flags"]]  # blocked by the pause
        assert len(blocked) == 1
        master.client_kill_filter(_id=blocked[0]["id"])
        with pytest.raises(RedisConnectionError):
            await pending
    finally:
        master.client_unpause()
    await asyncio.sleep(0.1)
    assert master.get(counter) == b"1"  # never run, and not sent again
    assert await incr() == 2  # the next command reconnects


@pytest.fixture
async def cluster_client(redis_cluster: LocalCluster) -> AsyncIterator[RedisCluster]:
    """The services' own cluster client (connect(mode="cluster")) on the local cluster."""
    client = connect(redis_cluster.url, mode="cluster")
    yield client
    await client.aclose()
