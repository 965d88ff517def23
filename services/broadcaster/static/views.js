// DOM rendering of the ladder, the tape and the ticker. Every price and quantity is written as the API
// wrote it (or as decimal.js computed it exactly); Number() only sizes the depth bars.
import { compare, sub } from "./decimal.js";

function cell(className, text) {
  const element = document.createElement("span");
  element.className = className;
  element.textContent = text;
  return element;
}

function row(className, ...cells) {
  const element = document.createElement("div");
  element.className = className;
  element.append(...cells);
  return element;
}

/** One side of the ladder: one child per level (CONTRACT.md), bars scaled to the deeper side's total. */
export function renderLadder(container, levels, side, maxCumulative) {
  const rows = levels.map((level) => {
    const element = row(`level ${side}`, cell("price", level.price), cell("qty", level.quantity),
      cell("cum", level.cumulative));
    element.dataset.price = level.price;
    const width = maxCumulative > 0 ? (100 * Number(level.cumulative)) / maxCumulative : 0;
    element.style.setProperty("--depth", `${width.toFixed(1)}%`);
    return element;
  });
  // Asks are listed highest first, so both sides meet at the spread in the middle.
  container.replaceChildren(...(side === "ask" ? rows.reverse() : rows));
}

/** The tape: one child per trade, newest first. */
export function renderTrades(container, trades) {
  container.replaceChildren(...trades.map((trade) => {
    const element = row(`trade ${trade.taker_side}`, cell("time", trade.executed_at.slice(11, 19)),
      cell("price", trade.price), cell("qty", trade.quantity));
    element.dataset.seq = String(trade.seq);
    return element;
  }));
}

/** The 24 h ticker as GET /analytics/{instrument}/ticker answers it ("-" where there was no trade). */
export function renderTicker(container, ticker) {
  const show = (name, value) => {
    const element = container.querySelector(`[data-field="${name}"]`);
    if (element) element.textContent = value ?? "-";
  };
  for (const name of ["open", "high", "low", "volume", "quote_volume", "vwap", "trade_count"]) show(name, ticker[name]);
  const change = container.querySelector('[data-field="change"]');
  if (ticker.open && ticker.last) {
    const difference = sub(ticker.last, ticker.open, ticker.last.split(".")[1]?.length ?? 0);
    // The percentage is a ratio for the eye, not an amount: a float is fine here.
    const percent = (100 * Number(difference)) / Number(ticker.open);
    change.textContent = `${difference} (${percent >= 0 ? "+" : ""}${percent.toFixed(2)}%)`;
    change.className = compare(difference, "0") < 0 ? "down" : "up";
  } else {
    change.textContent = "-";
    change.className = "";
  }
}

/** The last trade's price, coloured by its direction from the previous one. */
export function renderLastPrice(element, price, previous) {
  element.textContent = price ?? "-";
  if (price && previous) {
    const direction = compare(price, previous);
    if (direction !== 0) element.className = direction > 0 ? "up" : "down";
  }
}
