"""Head pose over HTTP with dynamic batching (`fsanet serve`), and a load tool (`fsanet loadtest`).

The batcher, limits, metrics and load tool need no web framework; `fsanet.deploy.serve.app`
needs the `serve` extra (FastAPI, uvicorn, python-multipart) and says so in one line when it is
missing.
"""
