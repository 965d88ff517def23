"""Analytics and clearing over the trades record: candles, ticker, client positions, settlement."""
