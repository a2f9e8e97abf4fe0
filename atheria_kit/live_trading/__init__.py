"""Live paper trading on Binance kline streams: the replay engine driven by a live bar feed."""
