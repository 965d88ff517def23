// Finds the ceiling of POST /orders: a ramping arrival rate from START to MAX orders/s; the run
// aborts as soon as p99 latency passes ABORT_P99_MS, more than 1% of requests fail, or k6 cannot
// start requests on time (dropped iterations). The `target_rate` gauge in the summary is the rate
// being offered when it stopped: the ceiling of acceptance (scripts/bench.sh checks the matcher,
// persister and broadcaster kept up, with fixed rates through rate.js).
//
//   k6 run load-test/capacity.js
//   k6 run -e START=2000 -e MAX=20000 -e RAMP=120s -e ABORT_P99_MS=100 load-test/capacity.js
//
// Environment: START (1000), MAX (20000), WARM (10s at START), RAMP (120s), ABORT_P99_MS (100),
// MAX_VUS (2000), plus lib.js's (BASE_URL, API_KEY=demo-broker, ...). Engine: RATE_LIMIT_PER_SEC=0.
import exec from 'k6/execution';
import { Gauge } from 'k6/metrics';
import { orderFlow, postOrder } from './lib.js';

const START = parseInt(__ENV.START || '1000', 10);
const MAX = parseInt(__ENV.MAX || '20000', 10);
const WARM = __ENV.WARM || '10s';
const RAMP = __ENV.RAMP || '120s';
const warmS = parseInt(WARM, 10);
const rampS = parseInt(RAMP, 10);
const targetRate = new Gauge('target_rate');

export const options = {
  discardResponseBodies: true,
  scenarios: {
    capacity: {
      executor: 'ramping-arrival-rate',
      startRate: START,
      timeUnit: '1s',
      preAllocatedVUs: 100,
      maxVUs: parseInt(__ENV.MAX_VUS || '2000', 10),
      stages: [
        { target: START, duration: WARM },
        { target: MAX, duration: RAMP },
      ],
    },
  },
  thresholds: {
    'http_req_duration{name:POST /orders}': [
      { threshold: `p(99)<${__ENV.ABORT_P99_MS || '100'}`, abortOnFail: true, delayAbortEval: '5s' },
    ],
    http_req_failed: [{ threshold: 'rate<0.01', abortOnFail: true, delayAbortEval: '5s' }],
    dropped_iterations: [{ threshold: `rate<${__ENV.MAX_DROPPED_PER_S || '20'}`, abortOnFail: true, delayAbortEval: '5s' }],
  },
};

let next;

export default function () {
  if (next === undefined) next = orderFlow(__VU);
  postOrder(next());
  // The rate offered now, from the schedule.
  const t = exec.instance.currentTestRunDuration / 1000;
  targetRate.add(t <= warmS ? START : Math.min(MAX, START + ((MAX - START) * (t - warmS)) / rampS));
}
