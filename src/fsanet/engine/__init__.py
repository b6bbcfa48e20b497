"""A built engine: its artifact (files + manifest), the backends that run it, run-time TTA."""
