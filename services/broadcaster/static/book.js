// One instrument's order book as the /stream feed keeps it: a snapshot, then deltas in seq order.
import { add, compare, isZero } from "./decimal.js";

export class OrderBook {
  constructor() {
    this.reset();
  }

  /** Forget everything: the next snapshot starts the book again. */
  reset() {
    this.seq = null; // null: waiting for a snapshot, deltas are ignored
    this.bids = new Map(); // price text -> quantity text
    this.asks = new Map();
  }

  /** The whole book at `seq` (an orderbook_snapshot message). */
  applySnapshot(message) {
    this.bids = new Map(message.bids);
    this.asks = new Map(message.asks);
    this.seq = message.seq;
  }

  /**
   * One orderbook_delta: "applied", "stale" (at or before the book's seq: already in it), "waiting" (no
   * snapshot yet) or "gap" (a delta was missed: the book is no longer right and needs a fresh snapshot).
   */
  applyDelta(message) {
    if (this.seq === null) return "waiting";
    if (message.seq <= this.seq) return "stale";
    if (message.seq !== this.seq + 1) return "gap";
    for (const [side, price, quantity] of message.changes) {
      const levels = side === "buy" ? this.bids : this.asks;
      if (isZero(quantity)) levels.delete(price);
      else levels.set(price, quantity);
    }
    this.seq = message.seq;
    return "applied";
  }

  /** The best `count` levels of a side, best first, each with its cumulative depth (exact). */
  levels(side, count) {
    const levels = side === "buy" ? this.bids : this.asks;
    const direction = side === "buy" ? -1 : 1;
    // Number() is monotonic, so it orders distinct prices correctly except where two round to the same
    // float; the exact comparison settles those. Sorting a big book on BigInts alone costs ~10x more.
    const order = (a, b) => direction * (Number(a) - Number(b) || compare(a, b));
    const prices = [...levels.keys()].sort(order).slice(0, count);
    let cumulative = "0";
    return prices.map((price) => {
      const quantity = levels.get(price);
      cumulative = add(cumulative, quantity);
      return { price, quantity, cumulative };
    });
  }
}
