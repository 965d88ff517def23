// The assignment's load profile: ramp to 100 virtual users, hold, ramp down; each user POSTs orders
// back to back (a closed loop: throughput is whatever the engine answers; use rate.js for latency
// at a fixed rate, which has no coordinated omission).
//
//   k6 run load-test/script.js
//   k6 run -e RAMP=10s -e HOLD=20s -e VUS=100 -e BASE_URL=http://127.0.0.1:3000 load-test/script.js
//
// Environment: VUS (100), RAMP (30s), HOLD (60s), DOWN (10s), P95_MS (100), plus lib.js's
// (BASE_URL, API_KEY=demo-broker, SEED, CROSS, ...). Needs RATE_LIMIT_PER_SEC=0 on the engine, or
// CLIENTS large enough that no client id passes its rate limit (1,000/s by default).
// Fails (exit 99) when p95 or the median of POST /orders passes its bound, more than 1% fail, or a
// status check fails more than 1% of the time.
import { orderFlow, postOrder } from './lib.js';

const VUS = parseInt(__ENV.VUS || '100', 10);

export const options = {
  discardResponseBodies: true,
  stages: [
    { duration: __ENV.RAMP || '30s', target: VUS },
    { duration: __ENV.HOLD || '60s', target: VUS },
    { duration: __ENV.DOWN || '10s', target: 0 },
  ],
  thresholds: {
    'http_req_duration{name:POST /orders}': [`p(95)<${__ENV.P95_MS || '100'}`, 'med<100'],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

let next;

export default function () {
  if (next === undefined) next = orderFlow(__VU);
  postOrder(next());
}
