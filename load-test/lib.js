// Shared by the k6 scripts in this folder: the order flow (a seeded, realistic limit-order stream),
// the POST /orders request and its checks. Not a test on its own.
//
// Environment (all optional):
//   BASE_URL   ingest base URL                      (default http://127.0.0.1:3000)
//   API_KEY    a broker key, since orders carry many client ids (default demo-broker)
//   INSTRUMENT                                       (default BTC-USD)
//   MID        mid price                            (default 50000.00; tick 0.01, lot 0.00000001 as instruments.toml)
//   CROSS      fraction of limit orders priced through the mid, so they trade on arrival (default 0.3)
//   MARKET     fraction of orders that are market orders (default 0.02)
//   CLIENTS    number of client ids k6-001.. (default 100)
//   SEED       base of the per-VU random seed (default 1): same seed, same flow per VU
//   IDEMPOTENCY=0  leave out the idempotency key (default: a unique key per order, as careful clients send)
import http from 'k6/http';
import { check } from 'k6';

export const BASE_URL = __ENV.BASE_URL || 'http://127.0.0.1:3000';
export const API_KEY = __ENV.API_KEY || 'demo-broker';
const INSTRUMENT = __ENV.INSTRUMENT || 'BTC-USD';
const MID_TICKS = Math.round(parseFloat(__ENV.MID || '50000.00') * 100);
const CROSS = parseFloat(__ENV.CROSS || '0.3');
const MARKET = parseFloat(__ENV.MARKET || '0.02');
const CLIENTS = parseInt(__ENV.CLIENTS || '100', 10);
const SEED = parseInt(__ENV.SEED || '1', 10);
const IDEMPOTENCY = (__ENV.IDEMPOTENCY || '1') !== '0';
const ROUND_LOTS = [100000, 500000, 1000000, 2000000, 5000000, 10000000, 50000000, 100000000];
const RUN = Date.now().toString(36);

export const HEADERS = { 'Content-Type': 'application/json', Authorization: `Bearer ${API_KEY}` };

// mulberry32: a tiny seeded PRNG (Math.random cannot be seeded in k6).
export function prng(seed) {
  let a = seed >>> 0;
  return function next() {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function priceText(ticks) {
  const whole = Math.floor(ticks / 100);
  const cents = ticks % 100;
  return `${whole}.${cents < 10 ? '0' : ''}${cents}`;
}

function lotsText(lots) {
  const whole = Math.floor(lots / 1e8);
  const frac = String(lots % 1e8).padStart(8, '0').replace(/0+$/, '');
  return frac ? `${whole}.${frac}` : `${whole}`;
}

// One VU's order flow: prices a geometric number of ticks from the mid (most size near the touch),
// CROSS of them marketable, quantities on the lot (round sizes and log-normal ones).
export function orderFlow(vu) {
  const rand = prng(SEED * 100003 + vu);
  let n = 0;
  return function nextOrder() {
    n += 1;
    const side = rand() < 0.5 ? 'buy' : 'sell';
    const sign = side === 'buy' ? -1 : 1;
    const client = String(1 + Math.floor(CLIENTS * Math.pow(rand(), 2))).padStart(3, '0'); // skewed
    let lots;
    if (rand() < 0.4) {
      lots = ROUND_LOTS[Math.floor(rand() * ROUND_LOTS.length)];
    } else {
      // log-normal around 0.02, rounded to 1e-4
      const u = Math.max(rand(), 1e-12);
      const g = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
      lots = Math.max(10000, Math.round((0.02 * Math.exp(1.1 * g) * 1e4)) * 10000);
    }
    lots = Math.min(lots, 1000 * 1e8);
    const order = { client_id: `k6-${client}`, instrument: INSTRUMENT, side, quantity: lotsText(lots) };
    if (IDEMPOTENCY) order.idempotency_key = `k6-${RUN}-${vu}-${n}`;
    const r = rand();
    if (r < MARKET) {
      order.type = 'market';
    } else {
      const distance = Math.min(10000, Math.floor(-Math.log(Math.max(rand(), 1e-12)) * 200));
      const ticks = r < MARKET + CROSS ? MID_TICKS - sign * (1 + Math.floor(distance / 8)) : MID_TICKS + sign * (1 + distance);
      order.type = 'limit';
      order.price = priceText(Math.max(1, ticks));
    }
    return JSON.stringify(order);
  };
}

// POST one order body; checks the status (201 accepted, or 200 an idempotent replay when replay is allowed).
export function postOrder(body, allowReplay) {
  const res = http.post(`${BASE_URL}/orders`, body, { headers: HEADERS, tags: { name: 'POST /orders' } });
  check(res, {
    'status is 201': (r) => r.status === 201 || (allowReplay === true && r.status === 200),
    'not rate limited (429)': (r) => r.status !== 429,
    'not overloaded (503)': (r) => r.status !== 503,
  });
  return res;
}
