"""Exceptions that the CLI turns into one-line messages (no traceback)."""


class DelfxError(Exception):
    """A problem the user can act on: bad input, a refused resume, a damaged file."""


class StoreError(DelfxError):
    """The feature store on disk is missing, damaged, or of an unknown schema."""


class SchemaVersionError(StoreError):
    """A file was written with a schema version this delfx does not know."""
