class DatasetError(Exception):
    """A dataset that is missing, unreachable or malformed; str() is one line for the user."""
