"""`waxhouse serve`: live tables over HTTP, Server-Sent Events and WebSocket.

    waxhouse serve                          # the clickstream and sensors flows' live tables
    waxhouse serve --flow clickstream
    waxhouse serve --pipeline shop.orders:pipeline

Modules: `store` (the `LiveReader` contract and `RedisReader`), `history` (ClickHouse
queries of a key's past rows), `fanout` (one stream reader per table, its events sent to
every client), `server` (aiohttp: the handlers, SSE, WebSocket, shutdown, and
`start_in_thread` for a flow serving in its own process), `metrics`. Needs the `serve`
extra (aiohttp). docs/serving.md is the reference.
"""
