"""The one exception of the local mesh."""


class LocalMeshError(Exception):
    """A failure to report to the user (the message says what to do)."""
