"""Every error the recipe raises on purpose, and the exit code each ends the process with.

Imported by everyone, importing no one: the task returns an outcome, and train.cli alone turns
outcomes and these errors into the process's exit code. str() of each error is the one line the
user sees after `error: `.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_TRAINING_FAILED = 1  # the run is FAILED, with its log (a sweep with any failed trial, too)
EXIT_BAD_INPUT = 2  # refused before a run exists: nothing was created
EXIT_TRACKING_UNAVAILABLE = 3  # the tracking server or artifact store unreachable at start, or the record incomplete
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the run is KILLED, its log and outputs uploaded


class RecipeError(Exception):
    """Base of the recipe's own errors; `exit_code` is what the process ends with."""

    exit_code = EXIT_TRAINING_FAILED


class BadInput(RecipeError):
    """Input the recipe cannot run with, known before a run exists."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
    """A config value (or a command-line argument) the recipe cannot run with; names the key."""


class DatasetError(BadInput):
    """A dataset that is missing, unreachable or malformed."""


class SourceError(BadInput):
    """Something to fetch (a dataset or starting weights) that is missing, unreachable, denied or corrupt."""


class TrackingUnavailable(RecipeError):
    """The tracking server or its artifact store cannot be reached."""

    exit_code = EXIT_TRACKING_UNAVAILABLE


class RecordIncomplete(RecipeError):
    """Training ended but the server never took all of its record; what is missing is kept locally."""

    exit_code = EXIT_TRACKING_UNAVAILABLE


class ModelAbandoned(RecipeError):
    """A model's logging stopped between its requests: the run ended (failed, or was interrupted) first."""


class Outcome:
    """How one task ended: the exit code it asks for, and for sweepers the objective (NaN when it failed)."""

    def __init__(self, exit_code: int, objective: float = float("nan"), run_id: str = "") -> None:
        self.exit_code = exit_code
        self.objective = objective
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"Outcome(exit_code={self.exit_code}, objective={self.objective}, run_id={self.run_id!r})"
