"""Exceptions that reach the user: each says what happened and what to do about it."""


class WorkflowError(Exception):
    """An error the user can act on; the command line prints it without a traceback."""


class ConfigError(WorkflowError):
    """Invalid settings or arguments."""


class BadQuery(ConfigError):
    """A query that cannot be searched: an image that does not decode, a bad vector."""


class UnknownId(BadQuery):
    """An id that is not in the corpus (or has no feature, or was removed)."""


class NotBuilt(ConfigError):
    """A valid request for something the store does not hold yet (near-duplicate groups
    before the duplicates stage ran); the service answers 409."""


class SourceError(WorkflowError):
    """A source (folder, list file, archive) cannot be listed."""


class StoreError(WorkflowError):
    """The store cannot be read or written, even after retries."""


class CorruptFile(StoreError):
    """A committed file no longer matches its checksum; it was removed to be recomputed."""


class FingerprintMismatch(WorkflowError):
    """A stage is resumed with settings that differ from the frozen ones."""


class LeaseError(WorkflowError):
    """Another run holds the stage, or this run lost its lease."""


class DeadlineReached(Exception):
    """The stage stopped early on purpose (--max-minutes); re-running it resumes."""


def check_settings(checks: list[tuple[bool, str]]) -> None:
    """Raise one ConfigError listing the message of every failed (ok, message) check."""
    problems = [msg for ok, msg in checks if not ok]
    if problems:
        raise ConfigError("; ".join(problems))
