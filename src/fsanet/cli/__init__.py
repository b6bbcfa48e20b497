"""The `fsanet` command: thin verbs over the library, one module each (see `main`)."""

from fsanet.cli.main import main, parser

__all__ = ["main", "parser"]
