// 1-minute candles with volume: the history from GET /analytics/{instrument}/candles, then each live trade
// folded into its minute. OHLC and volume are kept as exact decimal strings; the chart gets floats to draw.
import { add, compare } from "./decimal.js";

const MINUTE_S = 60;
const UP = "#26a69a";
const DOWN = "#ef5350";

export class Candles {
  constructor(container, priceFormat) {
    const { createChart, CrosshairMode } = window.LightweightCharts;
    this.chart = createChart(container, {
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: "#c9d1d9", fontSize: 11 },
      grid: { vertLines: { color: "#21262d" }, horzLines: { color: "#21262d" } },
      crosshair: { mode: CrosshairMode.Normal },
      timeScale: { timeVisible: true, secondsVisible: false, borderColor: "#30363d", rightOffset: 4 },
      rightPriceScale: { borderColor: "#30363d" },
    });
    this.prices = this.chart.addCandlestickSeries({
      upColor: UP, downColor: DOWN, wickUpColor: UP, wickDownColor: DOWN, borderVisible: false, priceFormat,
    });
    this.volumes = this.chart.addHistogramSeries({ priceScaleId: "volume", priceFormat: { type: "volume" } });
    this.chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.bars = new Map(); // minute start (s since epoch) -> { open, high, low, close, volume } as texts
    this.changed = new Set(); // minutes to send to the chart at the next draw
    this.reload = true; // the whole series must be set again (history loaded, or an older minute changed)
    this.newest = -Infinity; // the newest minute the chart has
  }

  /** The history, oldest first, as the candles endpoint answers it. */
  load(candles) {
    this.bars.clear();
    this.newest = -Infinity;
    for (const candle of candles) {
      const { open, high, low, close, volume } = candle;
      const minute = Date.parse(candle.start) / 1000;
      this.bars.set(minute, { open, high, low, close, volume });
      this.newest = Math.max(this.newest, minute);
    }
    this.reload = true;
  }

  /** Fold one trade into its minute. */
  addTrade(trade) {
    const minute = Math.floor(Date.parse(trade.executed_at) / 1000 / MINUTE_S) * MINUTE_S;
    const bar = this.bars.get(minute);
    if (bar === undefined) {
      const price = trade.price;
      this.bars.set(minute, { open: price, high: price, low: price, close: price, volume: trade.quantity });
    } else {
      if (compare(trade.price, bar.high) > 0) bar.high = trade.price;
      if (compare(trade.price, bar.low) < 0) bar.low = trade.price;
      bar.close = trade.price;
      bar.volume = add(bar.volume, trade.quantity);
    }
    // The chart updates only its newest bar in place; a change further back sets the series again.
    if (minute < this.newest) this.reload = true;
    this.newest = Math.max(this.newest, minute);
    this.changed.add(minute);
  }

  point(minute) {
    const bar = this.bars.get(minute);
    const [open, high, low, close] = [bar.open, bar.high, bar.low, bar.close].map(Number);
    return {
      price: { time: minute, open, high, low, close },
      volume: { time: minute, value: Number(bar.volume), color: close >= open ? `${UP}80` : `${DOWN}80` },
    };
  }

  /** Send what changed since the last draw to the chart. */
  draw() {
    if (this.reload) {
      const points = [...this.bars.keys()].sort((a, b) => a - b).map((minute) => this.point(minute));
      this.prices.setData(points.map((p) => p.price));
      this.volumes.setData(points.map((p) => p.volume));
      this.reload = false;
    } else {
      for (const minute of [...this.changed].sort((a, b) => a - b)) {
        const point = this.point(minute);
        this.prices.update(point.price);
        this.volumes.update(point.volume);
      }
    }
    this.changed.clear();
  }
}
