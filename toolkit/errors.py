"""User-facing errors. The CLI prints their message on one line and exits with code 2."""


class QadtrError(ValueError):
    """Bad input from the user: a wrong argument, a missing file, a corrupt checkpoint."""


class DataError(QadtrError):
    """A data folder is missing, empty or in an unknown layout."""


class CheckpointError(QadtrError):
    """A checkpoint is missing, corrupt, unsafe, or for another model."""
