"""Head pose over HTTP with dynamic batching (`fsanet serve`), and a load tool (`fsanet loadtest`).

The batcher, limits, metrics and load tool need no web framework; `fsanet.deploy.serve.app`
needs the `serve` extra (FastAPI, uvicorn, python-multipart) and says so in one line when it is
missing.
"""

from fsanet.deploy.serve.batcher import DynamicBatcher, Overloaded
from fsanet.deploy.serve.limits import Limits
from fsanet.deploy.serve.loadtest import LoadReport, run_load

__all__ = ["DynamicBatcher", "Limits", "LoadReport", "Overloaded", "run_load"]
