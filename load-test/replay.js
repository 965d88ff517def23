// Replays a fixtures file (JSONL of POST /orders bodies, as fixtures/gen_orders.py writes) at a
// constant arrival rate, line by line in order, once through the file.
//
//   python3 fixtures/gen_orders.py --seed 1 --out fixtures/orders.jsonl
//   k6 run -e FILE=../fixtures/orders.jsonl -e RATE=2000 load-test/replay.js
//
// Environment: FILE (path relative to this script, default ../fixtures/orders.jsonl), RATE (2000),
// LIMIT (replay only the first N lines), P99_MS (50), MAX_VUS (1000), BASE_URL, API_KEY
// (demo-broker: the lines carry many client ids). The lines carry idempotency keys, so replaying
// a file twice against one engine answers 200 (replayed) the second time: both count as success.
// Fails (exit 99) on p99 over P99_MS, more than 1% failed requests or checks, or dropped requests.
// The file's skewed client ids never cancel: against the shipped max_open_orders (1,000 resting orders per
// client) the matcher rejects about 46% of gen_orders' default 100k (still 201 here); run the engine with
// INSTRUMENTS_FILE=load-test/instruments.toml (the cap raised) for a replay that rejects none.
import { SharedArray } from 'k6/data';
import exec from 'k6/execution';
import { postOrder } from './lib.js';

const RATE = parseInt(__ENV.RATE || '2000', 10);
const LIMIT = parseInt(__ENV.LIMIT || '0', 10);

// Kept as the raw JSON text of each line: one copy shared by every VU, sent as it is.
const lines = new SharedArray('orders', function load() {
  const all = open(__ENV.FILE || '../fixtures/orders.jsonl').split('\n').filter((line) => line.trim() !== '');
  return LIMIT > 0 ? all.slice(0, LIMIT) : all;
});

export const options = {
  discardResponseBodies: true,
  scenarios: {
    replay: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${Math.max(1, Math.ceil(lines.length / RATE))}s`,
      preAllocatedVUs: Math.max(50, Math.ceil(RATE / 20)),
      maxVUs: parseInt(__ENV.MAX_VUS || '1000', 10),
    },
  },
  thresholds: {
    'http_req_duration{name:POST /orders}': [`p(99)<${__ENV.P99_MS || '50'}`],
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    dropped_iterations: [`count<=${Math.ceil(lines.length * 0.01)}`],
  },
};

export default function () {
  const i = exec.scenario.iterationInTest;
  if (i >= lines.length) return;
  postOrder(lines[i], true);
}
