"""Errors a user can act on. The CLI prints them as one line, without a traceback."""


class TnbError(Exception):
    """Base class for every error tnb raises on bad input or bad lake state."""


class LakeError(TnbError):
    """The lake is unwritable, holds a foreign or corrupt file, or is locked."""


class SchemaError(LakeError):
    """A table does not have the schema its lake table declares."""


class CorpusError(TnbError):
    """The corpus is empty, missing, or has no such text column."""


class ModelError(TnbError):
    """The model is unknown, unreachable offline, or has no such layer or site."""
