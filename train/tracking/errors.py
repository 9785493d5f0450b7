"""The two ways tracking can fail a run, importable without importing MLflow (untracked runs never do)."""


class TrackingUnavailable(RuntimeError):
    """The tracking server or its artifact store cannot be reached; str() is one line."""


class RecordIncomplete(RuntimeError):
    """Training ended but the server never took all of its record; what is missing is kept locally."""
