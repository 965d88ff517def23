// The market page: loads the configuration and the history from ingest, follows /stream, and redraws at most
// a few times a second however fast messages arrive (at 2,000 orders/s the feed carries thousands of
// messages a second; redrawing per message would freeze the tab).
import { OrderBook } from "./book.js";
import { Candles } from "./candles.js";
import { add, compare, mul } from "./decimal.js";
import { drawDepth } from "./depth.js";
import { Feed } from "./feed.js";
import { renderLadder, renderLastPrice, renderTicker, renderTrades } from "./views.js";

const REDRAW_MS = 250; // at most 4 redraws a second
const TAPE_SIZE = 50;
const DEPTH_LEVELS = 100; // levels a side on the depth chart
const HISTORY_MS = 6 * 60 * 60 * 1000; // candles of the last 6 hours
const TICKER_REFRESH_MS = 10_000;

const $ = (selector) => document.querySelector(selector);

// What tests and the curious can read: how often the page redrew and what the feed did.
const stats = { redraws: 0, messages: 0, trades: 0, snapshots: 0, resyncs: 0, connects: 0, errors: [] };
window.marketPage = stats;

let config = null;
let state = null;

function newState(instrument) {
  return {
    instrument,
    book: new OrderBook(),
    trades: [], // newest first, at most TAPE_SIZE
    lastPrice: null,
    previousPrice: null,
    ticker: null,
    candles: null,
    feed: null,
    timers: [],
  };
}

async function getJson(path) {
  const answer = await fetch(`${config.ingest_url}${path}`, { cache: "no-store" });
  if (!answer.ok) throw new Error(`${path}: HTTP ${answer.status}`);
  return answer.json();
}

function setStatus(text, live) {
  const element = $("#status");
  element.textContent = text;
  element.className = live ? "live" : "down";
}

// Problems shown to the user, one line per source (ticker, candles, trades, feed), each cleared by the next
// success of that source: a 503 under load should not stay on screen once ingest answers again.
const notices = new Map();

function notice(source, text) {
  if (text === null) notices.delete(source);
  else {
    stats.errors.push(`${source}: ${text}`);
    notices.set(source, `${source}: ${text}`);
  }
  $("#notice").textContent = [...notices.values()].join(" · ");
}

// Redraws ----------------------------------------------------------------------------------------

let dirty = false;
let timer = null;
let lastDraw = 0;

/** Note that something changed; the page redraws once at the next slot, however many changes came in. */
function invalidate() {
  dirty = true;
  if (timer !== null) return;
  const wait = Math.max(0, lastDraw + REDRAW_MS - performance.now());
  timer = setTimeout(() => requestAnimationFrame(redraw), wait);
}

function redraw() {
  timer = null;
  if (!dirty || state === null) return;
  dirty = false;
  lastDraw = performance.now();
  stats.redraws += 1;
  const bids = state.book.levels("buy", DEPTH_LEVELS);
  const asks = state.book.levels("sell", DEPTH_LEVELS);
  const ladderBids = bids.slice(0, config.levels);
  const ladderAsks = asks.slice(0, config.levels);
  const deepest = Math.max(Number(ladderBids.at(-1)?.cumulative ?? 0), Number(ladderAsks.at(-1)?.cumulative ?? 0));
  renderLadder($("#book-bids"), ladderBids, "bid", deepest);
  renderLadder($("#book-asks"), ladderAsks, "ask", deepest);
  $("#spread").textContent = ladderBids.length && ladderAsks.length
    ? `bid ${ladderBids[0].price} / ask ${ladderAsks[0].price}` : "";
  drawDepth($("#depth"), bids, asks);
  renderTrades($("#trades"), state.trades);
  renderLastPrice($("#last-price"), state.lastPrice, state.previousPrice);
  if (state.ticker) renderTicker($("#ticker"), { ...state.ticker, last: state.lastPrice ?? state.ticker.last });
  state.candles?.draw();
  $("#book-seq").textContent = state.book.seq === null ? "waiting for a snapshot" : `book seq ${state.book.seq}`;
}

// Feed handlers ----------------------------------------------------------------------------------

function onTrade(trade) {
  stats.trades += 1;
  state.trades.unshift(trade);
  if (state.trades.length > TAPE_SIZE) state.trades.length = TAPE_SIZE;
  state.previousPrice = state.lastPrice;
  state.lastPrice = trade.price;
  const ticker = state.ticker;
  if (ticker) {
    // Live between refreshes; each refresh replaces these with PostgreSQL's figures for the sliding 24 h
    // (vwap, a rounded quotient, waits for it).
    if (ticker.high === null || compare(trade.price, ticker.high) > 0) ticker.high = trade.price;
    if (ticker.low === null || compare(trade.price, ticker.low) < 0) ticker.low = trade.price;
    ticker.open ??= trade.price;
    ticker.volume = add(ticker.volume, trade.quantity);
    ticker.quote_volume = add(ticker.quote_volume, mul(trade.price, trade.quantity));
    ticker.trade_count += 1;
  }
  state.candles?.addTrade(trade);
  invalidate();
}

function handlers() {
  return {
    trade: (message) => { stats.messages += 1; onTrade(message); },
    snapshot: (message) => {
      stats.messages += 1;
      stats.snapshots += 1;
      state.book.applySnapshot(message);
      invalidate();
    },
    delta: (message) => {
      stats.messages += 1;
      const outcome = state.book.applyDelta(message);
      if (outcome === "applied") invalidate();
      return outcome;
    },
    resync: () => { stats.resyncs += 1; state.book.reset(); invalidate(); },
    disconnected: () => { state.book.reset(); invalidate(); },
    status: (text, live) => { if (live) stats.connects += 1; setStatus(text, live); },
    error: (text) => notice("feed", text),
  };
}

// Loading an instrument --------------------------------------------------------------------------

async function loadTicker(current) {
  try {
    const ticker = await getJson(`/analytics/${encodeURIComponent(current.instrument)}/ticker`);
    if (state !== current) return;
    current.ticker = ticker;
    notice("ticker", null);
    invalidate();
  } catch (error) {
    notice("ticker", error.message);
  }
}

async function loadHistory(current) {
  const symbol = encodeURIComponent(current.instrument);
  // Candles first, then trades: a trade persisted between the two reads is then in neither the candles nor
  // (being older than since_seq) the replay, rather than counted twice; a rare, small undercount.
  try {
    const candles = await getJson(`/analytics/${symbol}/candles?interval=1m&start=${Date.now() - HISTORY_MS}`);
    if (state === current) current.candles.load(candles);
  } catch (error) {
    notice("candles", error.message);
  }
  try {
    const trades = await getJson(`/trades?instrument=${symbol}&limit=${TAPE_SIZE}`);
    if (state !== current) return null;
    current.trades = trades;
    current.lastPrice = trades[0]?.price ?? null;
    current.previousPrice = trades[1]?.price ?? null;
    return trades[0]?.seq ?? 0; // replay whatever the stream has beyond what PostgreSQL had
  } catch (error) {
    notice("trades", error.message);
    return null; // live trades only
  }
}

async function show(instrument) {
  if (state !== null) {
    state.feed?.close();
    state.timers.forEach(clearInterval);
  }
  const current = newState(instrument);
  state = current;
  const spec = config.instruments.find((i) => i.symbol === instrument);
  document.title = `${instrument} · market`;
  $("#instrument").value = instrument;
  notices.clear();
  $("#notice").textContent = "";
  const container = $("#candles");
  container.replaceChildren();
  current.candles = new Candles(container, { type: "price", precision: spec.price_places, minMove: Number(spec.tick) });
  invalidate();
  const [sinceSeq] = await Promise.all([loadHistory(current), loadTicker(current)]);
  if (state !== current) return;
  current.feed = new Feed(instrument, handlers(), sinceSeq);
  stats.feed = current.feed; // for tests: they feed it a delta out of sequence to check the resync
  current.feed.start();
  current.timers.push(setInterval(() => loadTicker(current), TICKER_REFRESH_MS));
  invalidate();
}

async function main() {
  config = await (await fetch("/config.json", { cache: "no-store" })).json();
  const picker = $("#instrument");
  picker.replaceChildren(...config.instruments.map((instrument) => {
    const option = document.createElement("option");
    option.value = instrument.symbol;
    option.textContent = `${instrument.symbol} (${instrument.base}/${instrument.quote})`;
    return option;
  }));
  // The instrument lives in the URL's fragment, so a reload or a shared link shows the same market.
  const chosen = () => {
    const wanted = decodeURIComponent(location.hash.slice(1));
    return config.instruments.some((i) => i.symbol === wanted) ? wanted : config.instruments[0].symbol;
  };
  picker.addEventListener("change", () => { location.hash = picker.value; });
  window.addEventListener("hashchange", () => show(chosen()));
  await show(chosen());
}

main().catch((error) => notice("page", `could not start: ${error.message}`));
