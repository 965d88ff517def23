// The /stream subscription of one instrument: trades and the book, kept whole across gaps and reconnects.
//
// Book: a snapshot, then deltas whose seq has no gaps; a missing seq means the book is wrong, so the feed
// unsubscribes and subscribes again, which makes the broadcaster send a fresh snapshot.
// Trades: after a disconnect the feed subscribes with since_seq, the last trade seq it saw, so the
// broadcaster replays exactly the trades it missed (CONTRACT.md, WebSocket section).

const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 5000;

export class Feed {
  /**
   * handlers: { trade(message), snapshot(message), delta(message) -> "applied"|"stale"|"waiting"|"gap",
   *             resync() (a delta was missed: the book is wrong until the next snapshot),
   *             disconnected() (the same until the new connection's snapshot), status(text, live), error(text) }
   * sinceSeq: the last trade seq already shown (null: none known, only live trades are wanted).
   */
  constructor(instrument, handlers, sinceSeq) {
    this.instrument = instrument;
    this.handlers = handlers;
    this.lastTradeSeq = sinceSeq;
    this.retryMs = RETRY_MIN_MS;
    this.closed = false;
    this.socket = null;
    this.resyncs = 0;
    this.connects = 0;
  }

  start() {
    this.connect();
  }

  /** Stop for good (the page switched instrument): no reconnect. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.socket) this.socket.close(1000);
  }

  connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/stream`);
    this.socket = socket;
    socket.onopen = () => {
      this.connects += 1;
      this.retryMs = RETRY_MIN_MS;
      const subscribe = { op: "subscribe", channels: ["trades", "orderbook_deltas"], instruments: [this.instrument] };
      if (this.lastTradeSeq !== null) subscribe.since_seq = this.lastTradeSeq;
      socket.send(JSON.stringify(subscribe));
      this.handlers.status("live", true);
    };
    socket.onmessage = (event) => {
      const payload = JSON.parse(event.data);
      // The broadcaster batches several messages into one frame (a JSON array) under load.
      for (const message of Array.isArray(payload) ? payload : [payload]) this.dispatch(message);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = null;
      if (this.closed) return;
      // The book is rebuilt from the snapshot the next subscribe brings; trades resume after lastTradeSeq.
      this.handlers.disconnected();
      this.handlers.status(`reconnecting (closed ${event.code})`, false);
      this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(RETRY_MAX_MS, this.retryMs * 2);
    };
  }

  dispatch(message) {
    if (message.instrument !== undefined && message.instrument !== this.instrument) return;
    switch (message.type) {
      case "trade":
        // A replay and the live feed may both carry a trade; seq says which are new.
        if (this.lastTradeSeq !== null && message.seq <= this.lastTradeSeq) return;
        this.lastTradeSeq = message.seq;
        this.handlers.trade(message);
        break;
      case "orderbook_snapshot":
        this.handlers.snapshot(message);
        break;
      case "orderbook_delta":
        if (this.handlers.delta(message) === "gap") this.resync();
        break;
      case "error":
        this.handlers.error(message.message);
        break;
      default:
        break; // subscribed, unsubscribed, pong
    }
  }

  /** Ask for a fresh snapshot: the broadcaster sends one on every new book subscription. */
  resync() {
    this.resyncs += 1;
    this.handlers.resync();
    const book = { channels: ["orderbook_deltas"], instruments: [this.instrument] };
    this.socket.send(JSON.stringify({ op: "unsubscribe", ...book }));
    this.socket.send(JSON.stringify({ op: "subscribe", ...book }));
  }
}
