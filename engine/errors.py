"""The project's exception types. Their message is written for the user; stack traces go to logs."""


class StudioError(Exception):
    """Base class: `str(error)` is a complete, actionable message."""


class ModelLoadError(StudioError):
    """A checkpoint could not be found, downloaded or understood."""


class ImageReadError(StudioError):
    """One input image could not be used; `source` names it, `reason` says why."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class LabelError(StudioError):
    """A label set or prompt template cannot be used."""


class IndexStoreError(StudioError):
    """An image index cannot be created, opened, changed or searched."""


class QueryError(StudioError):
    """A search query cannot be parsed or run."""


class InspectError(StudioError):
    """An inspection view cannot be computed as asked (sequence length, query, patch outside the grid)."""


class TrainError(StudioError):
    """A fine-tuning or evaluation run cannot start or go on (data, device, settings)."""
