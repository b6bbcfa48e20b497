"""Errors that reach the user.

Only `FsanetError` and its subclasses are printed by the CLI as one line (exit code 1);
anything else is a bug and keeps its traceback.
"""


class FsanetError(Exception):
    """A problem the user can fix: bad input, a missing file, a failed check."""


class FetchError(FsanetError):
    """A file could not be found, downloaded or verified."""


class ChecksumError(FetchError):
    """A file's sha256 is not the one the registry pins."""


class DatasetError(FsanetError):
    """A dataset file is missing, damaged or has the wrong layout."""


class ArtifactError(FsanetError):
    """An engine artifact is missing, damaged or inconsistent with its manifest."""


class BuildError(FsanetError):
    """An engine could not be built (missing build tools, failed parity check...)."""


class InputError(FsanetError):
    """An array given to a runner has the wrong shape, dtype or values."""
