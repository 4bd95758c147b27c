"""Exception types for bad input. Each message is one line naming the file, line or key."""


class KexueError(Exception):
    """Base class: bad input the user can fix; the CLI prints it as one line, no traceback."""


class ParamsError(KexueError):
    """A params.yaml key is missing or has the wrong type."""


class DataError(KexueError):
    """A data file is missing, empty, not UTF-8 or not in the expected format."""


class SourceError(KexueError):
    """A data source could not be fetched, or its hash does not match."""


class TrackingError(KexueError):
    """The MLflow tracking store cannot be reached or refused a request."""


class IncompatibleDataError(DataError):
    """A trained model cannot read these data: they hold a class, or need an input shape,
    that it was not trained on (the registry then crowns the version that can)."""


class ExportError(KexueError):
    """A model to export lacks a signature or an input example, or fails its own example."""
