"""`WS /v1/stream`: camera frames in, one JSON answer per frame out, the video path per stream.

`access` (origin, API key, options; no web framework), `frames` (the CPU work of one frame),
`session` (one connection: receive, pose newest-only, send), `transport` (uvicorn's WebSocket
protocol with per-connection message limits and a hard drop). Imports nothing here, so the
configuration can read `access` cheaply.
"""
