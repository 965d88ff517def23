// The depth chart: cumulative quantity against price, bids left of the spread and asks right, on a canvas.
// A drawing only: floats position pixels, no number drawn here is read back as an amount.

const COLORS = { bid: "#26a69a", ask: "#ef5350", bidFill: "rgba(38,166,154,0.25)", askFill: "rgba(239,83,80,0.25)" };

function fitCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const { width, height } = canvas.getBoundingClientRect();
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { context, width, height };
}

function steps(levels) {
  return levels.map((level) => [Number(level.price), Number(level.cumulative)]);
}

function drawSide(context, points, x, y, edge, baseline, stroke, fill) {
  if (points.length === 0) return;
  context.beginPath();
  context.moveTo(x(points[0][0]), baseline);
  let height = 0;
  for (const [price, cumulative] of points) {
    context.lineTo(x(price), y(height));
    context.lineTo(x(price), y(cumulative));
    height = cumulative;
  }
  // The deepest level's total holds on to the edge: every price beyond it would fill that much.
  context.lineTo(edge, y(height));
  context.lineTo(edge, baseline);
  context.closePath();
  context.fillStyle = fill;
  context.fill();
  context.strokeStyle = stroke;
  context.lineWidth = 1.5;
  context.stroke();
}

/** Draw bids and asks (best first, with cumulative depth) on `canvas`; labels are the API's own texts. */
export function drawDepth(canvas, bids, asks) {
  const { context, width, height } = fitCanvas(canvas);
  context.clearRect(0, 0, width, height);
  const margin = { left: 8, right: 8, top: 8, bottom: 18 };
  const bidPoints = steps(bids);
  const askPoints = steps(asks);
  const all = [...bidPoints, ...askPoints];
  context.fillStyle = "#8b949e";
  context.font = "11px system-ui, sans-serif";
  if (all.length === 0) {
    context.fillText("no resting orders", width / 2 - 45, height / 2);
    return;
  }
  const lowest = Math.min(...all.map((p) => p[0]));
  const highest = Math.max(...all.map((p) => p[0]));
  // A tenth of the range (or of a price, for a single level) spare on each side, for the edges' plateaus.
  const pad = (highest - lowest) * 0.1 || Math.max(highest * 0.0005, 0.01);
  const low = lowest - pad;
  const span = highest + pad - low;
  const deepest = Math.max(...all.map((p) => p[1]));
  const x = (price) => margin.left + ((price - low) / span) * (width - margin.left - margin.right);
  const y = (cumulative) => height - margin.bottom - (cumulative / deepest) * (height - margin.top - margin.bottom);
  const baseline = height - margin.bottom;
  drawSide(context, bidPoints, x, y, margin.left, baseline, COLORS.bid, COLORS.bidFill);
  drawSide(context, askPoints, x, y, width - margin.right, baseline, COLORS.ask, COLORS.askFill);
  // Labels: the deepest prices drawn, as the API wrote them, under their own steps.
  context.fillStyle = "#8b949e";
  const labels = [bids.at(-1), bids[0], asks[0], asks.at(-1)].filter(Boolean);
  let right = -Infinity;
  for (const level of labels) {
    const text = level.price;
    const left = Math.min(Math.max(margin.left, x(Number(text)) - context.measureText(text).width / 2),
      width - margin.right - context.measureText(text).width);
    if (left > right + 6) {
      context.fillText(text, left, height - 4);
      right = left + context.measureText(text).width;
    }
  }
}
