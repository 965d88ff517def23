// Exact arithmetic on the API's decimal strings ("50000.00", "0.2"), on BigInt: the page never turns a
// price or a quantity into a binary float for anything it writes as text. Floats are for drawing only.

function parse(text) {
  const negative = text.startsWith("-");
  const digits = negative ? text.slice(1) : text;
  const dot = digits.indexOf(".");
  const whole = dot < 0 ? digits : digits.slice(0, dot);
  const fraction = dot < 0 ? "" : digits.slice(dot + 1);
  const units = BigInt((whole || "0") + fraction);
  return { units: negative ? -units : units, scale: fraction.length };
}

function aligned(a, b) {
  const x = parse(a);
  const y = parse(b);
  const scale = Math.max(x.scale, y.scale);
  return [x.units * 10n ** BigInt(scale - x.scale), y.units * 10n ** BigInt(scale - y.scale), scale];
}

function text(units, scale, places) {
  const negative = units < 0n;
  let digits = (negative ? -units : units).toString().padStart(scale + 1, "0");
  const whole = digits.slice(0, digits.length - scale);
  let fraction = digits.slice(digits.length - scale);
  if (places === undefined) {
    fraction = fraction.replace(/0+$/, ""); // quantities: no trailing zeros, as the API writes them
  } else {
    fraction = fraction.padEnd(places, "0").slice(0, places); // prices: exactly the tick's decimals
  }
  digits = fraction ? `${whole}.${fraction}` : whole;
  return negative && /[1-9]/.test(digits) ? `-${digits}` : digits;
}

/** a + b, exact; `places` fixes the decimals (prices), otherwise trailing zeros go (quantities). */
export function add(a, b, places) {
  const [x, y, scale] = aligned(a, b);
  return text(x + y, scale, places);
}

/** a - b, exact. */
export function sub(a, b, places) {
  const [x, y, scale] = aligned(a, b);
  return text(x - y, scale, places);
}

/** a × b, exact (a quote amount: price × quantity), without trailing zeros. */
export function mul(a, b) {
  const x = parse(a);
  const y = parse(b);
  return text(x.units * y.units, x.scale + y.scale);
}

/** -1, 0 or 1 as a is below, equal to or above b. */
export function compare(a, b) {
  const [x, y] = aligned(a, b);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** True for "0", "0.000" and the like: the API's way of saying a level is gone. */
export function isZero(a) {
  return parse(a).units === 0n;
}
