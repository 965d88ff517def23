"""The stall rule: a client that takes nothing for BROADCASTER_STALL_S while data waits for it is dropped.

"Taking" is measured where it happens, in the kernel: the bytes the peer's TCP acknowledged
(TCP_INFO tcpi_bytes_acked). Counting frames handed to the socket is not enough: a peer that stops
reading still accepts megabytes into the kernel buffers of both ends (a 4,000-order burst over
loopback fits whole), after which nothing is queued in the broadcaster and nothing would ever drop it.
Where TCP_INFO is not available (not Linux, not TCP), frames sent stand in for bytes acknowledged.

Nothing here runs per message: a loop looks at every client a few times per period, two syscalls each.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
import time
from collections.abc import Iterable
from typing import Any

from services.broadcaster.client import Client

TCP_INFO_LEN = 232
BYTES_ACKED = struct.Struct("=Q")  # struct tcp_info's tcpi_bytes_acked (Linux 4.1+)
BYTES_ACKED_OFFSET = 120
OUTQ = struct.Struct("=i")


class Progress:
    """What a client's connection has taken so far, and whether anything still waits for it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        self._sock = sock if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) else None

    def read(self, client: Client) -> tuple[int, bool]:
        """(a counter that grows when the peer takes data, whether data is waiting for the peer)."""
        waiting = client.sending or client.queued > 0
        if self._transport is not None:
            with contextlib.suppress(Exception):
                waiting = waiting or self._transport.get_write_buffer_size() > 0
        if self._sock is not None:
            try:
                info = self._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
                outq = OUTQ.unpack(fcntl.ioctl(self._sock.fileno(), termios.TIOCOUTQ, b"\0" * OUTQ.size))[0]
                if len(info) >= BYTES_ACKED_OFFSET + BYTES_ACKED.size:
                    return BYTES_ACKED.unpack_from(info, BYTES_ACKED_OFFSET)[0], waiting or outq > 0
            except (OSError, ValueError):
                self._sock = None  # closed, or not a TCP socket after all: frames from now on
        return client.messages_sent, waiting


async def watch_stalls(clients: Iterable[Client], stall_s: float) -> None:
    """Drop (reason "stalled") every client with data waiting and no progress for stall_s; runs until cancelled."""
    period = min(max(stall_s / 5, 0.02), 1.0)
    while True:
        await asyncio.sleep(period)
        now = time.monotonic()
        for client in list(clients):
            progress = client.progress
            if progress is None or client.closed:
                continue
            taken, waiting = progress.read(client)
            if not waiting or taken != client.stall_mark:
                client.stall_mark = taken
                client.stall_since = now
            elif now - client.stall_since >= stall_s:
                client.drop("stalled")
