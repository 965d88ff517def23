"""Fan-out: who gets which stream entry, by channel and instrument, and in what seq order.

Everything here is synchronous: the reader publishes a batch without yielding, so the order of
messages per client is the order of the streams, and no subscriber can slow the loop down.
"""

from __future__ import annotations

from collections.abc import Callable

from services.broadcaster.client import Client

GapHandler = Callable[["Feed"], None]


class Feed:
    """One client's subscription to a sequenced channel (trades or book deltas) of one instrument.

    While `pending` is a list, the feed is catching up (a snapshot or a replay being read) and live
    messages wait there; resume() then releases those after the catch-up's seq. Messages at or below
    `last_seq` are duplicates of what the catch-up already sent and are dropped.
    """

    __slots__ = ("channel", "client", "instrument", "last_seq", "on_gap", "pending")

    def __init__(self, client: Client, channel: str, instrument: str, on_gap: GapHandler | None) -> None:
        self.client = client
        self.channel = channel
        self.instrument = instrument
        self.on_gap = on_gap  # None: gaps are expected (trades started live) and not checked
        self.last_seq = 0
        self.pending: list[tuple[int, str]] | None = None

    def hold(self) -> None:
        """Buffer live messages until resume(); call before reading the catch-up."""
        self.pending = []

    def resume(self, seq: int) -> None:
        """The catch-up delivered everything up to `seq`: release the buffered messages after it."""
        pending, self.pending = self.pending or [], None
        self.last_seq = seq
        for item_seq, payload in pending:
            self.offer(item_seq, payload)

    def offer(self, seq: int, payload: str) -> None:
        pending = self.pending
        if pending is not None:
            pending.append((seq, payload))
            if len(pending) > self.client.bound:
                self.client.drop("slow")
            return
        if seq <= self.last_seq:
            return
        if self.on_gap is not None and seq != self.last_seq + 1:
            # A delta went missing (a trimmed stream): hold from here and let the session resnapshot.
            self.pending = [(seq, payload)]
            self.on_gap(self)
            return
        self.last_seq = seq
        self.client.push(payload)


class Hub:
    """Subscribers by channel and instrument; the reader publishes each entry's encoded message once."""

    def __init__(self) -> None:
        self._trades: dict[str, set[Feed]] = {}
        self._books: dict[str, set[Feed]] = {}
        self._orders_all: dict[str, set[Client]] = {}  # broker and admin sessions
        self._orders_own: dict[str, dict[str, set[Client]]] = {}  # trader sessions by client_id
        self._tails: dict[str, list[tuple[int, str]]] = {}  # deltas since a cached snapshot (snapshots.py)

    # Registration (sessions) --------------------------------------------------------------------

    def add_feed(self, feed: Feed) -> None:
        table = self._trades if feed.channel == "trades" else self._books
        table.setdefault(feed.instrument, set()).add(feed)

    def remove_feed(self, feed: Feed) -> None:
        table = self._trades if feed.channel == "trades" else self._books
        feeds = table.get(feed.instrument)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del table[feed.instrument]

    def add_orders(self, client: Client, instrument: str, client_id: str | None) -> None:
        """client_id None: every client's events (broker, admin); else only that client's."""
        if client_id is None:
            self._orders_all.setdefault(instrument, set()).add(client)
        else:
            self._orders_own.setdefault(instrument, {}).setdefault(client_id, set()).add(client)

    def remove_orders(self, client: Client, instrument: str, client_id: str | None) -> None:
        if client_id is None:
            clients = self._orders_all.get(instrument)
            if clients is not None:
                clients.discard(client)
                if not clients:
                    del self._orders_all[instrument]
            return
        by_client = self._orders_own.get(instrument, {})
        own = by_client.get(client_id)
        if own is not None:
            own.discard(client)
            if not own:
                del by_client[client_id]
            if not by_client:
                self._orders_own.pop(instrument, None)

    def add_tail(self, instrument: str) -> list[tuple[int, str]]:
        """From now on, also collect the instrument's deltas in the returned list (until remove_tail)."""
        tail: list[tuple[int, str]] = []
        self._tails[instrument] = tail
        return tail

    def remove_tail(self, instrument: str, tail: list[tuple[int, str]]) -> None:
        if self._tails.get(instrument) is tail:
            del self._tails[instrument]

    # Publishing (reader) ------------------------------------------------------------------------

    def wants_trades(self, instrument: str) -> bool:
        return instrument in self._trades

    def wants_book(self, instrument: str) -> bool:
        return instrument in self._books or instrument in self._tails

    def wants_orders(self, instrument: str, client_id: str) -> bool:
        return instrument in self._orders_all or client_id in self._orders_own.get(instrument, {})

    def publish_trade(self, instrument: str, seq: int, payload: str) -> None:
        for feed in self._trades.get(instrument, ()):
            feed.offer(seq, payload)

    def publish_delta(self, instrument: str, seq: int, payload: str) -> None:
        tail = self._tails.get(instrument)
        if tail is not None:
            tail.append((seq, payload))
        for feed in self._books.get(instrument, ()):
            feed.offer(seq, payload)

    def publish_order(self, instrument: str, client_id: str, payload: str) -> None:
        for client in self._orders_all.get(instrument, ()):
            client.push(payload)
        for client in self._orders_own.get(instrument, {}).get(client_id, ()):
            client.push(payload)
