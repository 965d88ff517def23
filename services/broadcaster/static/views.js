// DOM rendering of the ladder, the tape and the ticker. Every price and quantity is written as the API
// wrote it (or as decimal.js computed it exactly); Number() only sizes the depth bars.
import { compare, sub } from "./decimal.js";

function row(className, classes) {
  const element = document.createElement("div");
  element.className = className;
  for (const name of classes) {
    const span = document.createElement("span");
    span.className = name;
    element.append(span);
  }
  return element;
}

/**
 * Make `container` hold one row per item, changing only what differs from the last draw: at a few redraws a
 * second, rebuilding every row would make the browser lay the page out again for rows that did not move.
 */
function patch(container, items, className, classes, fill) {
  while (container.children.length > items.length) container.lastElementChild.remove();
  while (container.children.length < items.length) container.append(row(className, classes));
  items.forEach((item, index) => fill(container.children[index], item));
}

function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

/** One side of the ladder: one child per level (CONTRACT.md), bars scaled to the deeper side's total. */
export function renderLadder(container, levels, side, maxCumulative) {
  // Asks are listed highest first, so both sides meet at the spread in the middle.
  const rows = side === "ask" ? [...levels].reverse() : levels;
  patch(container, rows, `level ${side}`, ["price", "qty", "cum"], (element, level) => {
    const [price, quantity, cumulative] = element.children;
    setText(price, level.price);
    setText(quantity, level.quantity);
    setText(cumulative, level.cumulative);
    element.dataset.price = level.price;
    const width = maxCumulative > 0 ? (100 * Number(level.cumulative)) / maxCumulative : 0;
    element.style.setProperty("--depth", `${width.toFixed(1)}%`);
  });
}

/** The tape: one child per trade, newest first. */
export function renderTrades(container, trades) {
  patch(container, trades, "trade", ["time", "price", "qty"], (element, trade) => {
    if (element.dataset.seq === String(trade.seq)) return;
    const [time, price, quantity] = element.children;
    element.className = `trade ${trade.taker_side}`;
    setText(time, trade.executed_at.slice(11, 19));
    setText(price, trade.price);
    setText(quantity, trade.quantity);
    element.dataset.seq = String(trade.seq);
  });
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
