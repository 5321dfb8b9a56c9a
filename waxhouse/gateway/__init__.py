"""`waxhouse gateway`: HTTP and WebSocket into Kafka, acknowledged only once Kafka has it.

    waxhouse gateway                      # /v1/events and /v1/readings on GATEWAY_LISTEN
    waxhouse gateway --flow clickstream   # /v1/events only
    waxhouse gateway --route /v1/orders=shop.orders:pipeline@orders

Modules: `body` (decoding, limits and validation of a request body, pure), `limits`
(tokens, per-token rates, CORS, pure), `routes` (a path, a pipeline's schema and key, a
topic), `producer` (the confluent-kafka producer, counted-down acknowledgements,
readiness), `server` (aiohttp: the handlers, WebSocket, shutdown), `metrics`. Needs the
`gateway` extra (aiohttp, confluent-kafka). docs/gateway.md is the reference.
"""
