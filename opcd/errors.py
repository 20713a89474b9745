"""The one exception type users see: a clear, one-line message naming the culprit and what to do."""


class OpcdError(Exception):
    """Bad input or environment. The CLI prints `opcd: error: <message>` and exits with status 2."""
