"""Binance's wire formats, in one place (sans-I/O): the exchange adapter.

* :mod:`.frames` — WebSocket stream payloads (``trade``, ``aggTrade``, control replies) -> trades;
* :mod:`.rest` — REST: the REST host for a stream host, backfill pages (``historicalTrades``,
  ``aggTrades``) and their rows, the newest id, ``exchangeInfo``;
* :mod:`.streams` — stream names, combined-stream URLs, SUBSCRIBE, Binance's connection limits;
* :mod:`.depth` — the order book's: depth stream names, ``depthUpdate`` frames -> diffs, REST
  snapshot requests (``/api/v3/depth``), their answers -> snapshots, and their request weight.

``core/`` stays exchange-agnostic; a format change, or a second venue beside this one, touches
one folder.
"""
