// A constant arrival rate of POST /orders (default 2,000/s for 60 s): k6 starts each request on
// schedule whether or not earlier ones have answered, so latency is measured without coordinated
// omission; requests k6 could not start in time (no free VU) count as dropped_iterations.
//
//   k6 run load-test/rate.js
//   k6 run -e RATE=6000 -e DURATION=30s -e P99_MS=50 load-test/rate.js
//
// Environment: RATE (orders/s, 2000), DURATION (60s), VUS (preallocated, RATE/20 at least 50),
// MAX_VUS (1000), P99_MS (10: the project's p99 target at 2,000/s), MAX_DROPPED (1% of the planned
// requests), plus lib.js's (BASE_URL, API_KEY=demo-broker, SEED, CROSS, MARKET, CLIENTS, ...).
// Run it against an engine with RATE_LIMIT_PER_SEC=0 (or enough CLIENTS): this is a capacity test.
// Fails (exit 99) when p99 passes P99_MS, more than 1% of requests fail, a status check fails more
// than 1% of the time, or k6 dropped more than MAX_DROPPED requests.
import { orderFlow, postOrder } from './lib.js';

const RATE = parseInt(__ENV.RATE || '2000', 10);
const DURATION = __ENV.DURATION || '60s';
const seconds = parseInt(DURATION, 10) * (DURATION.endsWith('m') ? 60 : 1);

export const options = {
  discardResponseBodies: true,
  scenarios: {
    rate: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: parseInt(__ENV.VUS || String(Math.max(50, Math.ceil(RATE / 20))), 10),
      maxVUs: parseInt(__ENV.MAX_VUS || '1000', 10),
    },
  },
  thresholds: {
    'http_req_duration{name:POST /orders}': [`p(99)<${__ENV.P99_MS || '10'}`],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    dropped_iterations: [`count<=${__ENV.MAX_DROPPED || Math.ceil(RATE * seconds * 0.01)}`],
  },
};

let next;

export default function () {
  if (next === undefined) next = orderFlow(__VU);
  postOrder(next());
}
