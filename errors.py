"""Errors a user can act on. Each message names the bad value, what was expected and the fix;
the command line prints it as one line and exits 2 instead of showing a traceback."""


class DogmaError(Exception):
    """Base class for problems with the user's inputs, caches or configuration."""


class CacheError(DogmaError):
    """A cache that cannot be written or read as asked."""


class IncompleteCacheError(CacheError):
    """A cache whose manifest is not marked complete (a write that has not finished or was interrupted)."""


class InputError(DogmaError):
    """An input file, table or value that is malformed or inconsistent."""


class ModelError(DogmaError):
    """A model that cannot be found, loaded or run as asked (missing checkpoint file, unknown name, ...)."""


class WeightsMismatchError(ModelError):
    """Weights that do not fit the model their folder's config describes; `what` names the two (weights file and
    config) and `differences` counts the keys, so that a caller with its own flag names can say it its way."""

    def __init__(self, what: str, differences: str, fix: str):
        super().__init__(f"{what}: {differences}; {fix}")
        self.what, self.differences = what, differences
