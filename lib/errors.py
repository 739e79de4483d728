"""Errors a user can act on. The CLI prints them without a traceback and exits non-zero."""


class WorkbenchError(Exception):
    """Base class: the message is complete and actionable on its own."""

    exit_code = 2


class ImageError(WorkbenchError):
    """An image file cannot be used (the message says why)."""


class DatasetError(WorkbenchError):
    """A dataset is missing, malformed or cannot be ingested."""


class ManifestError(DatasetError):
    """A manifest has problems; ``problems`` lists every one of them."""

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"manifest {self.path} has {len(self.problems)} problem(s):\n{lines}")


class ModelError(WorkbenchError):
    """A model spec is invalid or the model cannot be used for a task."""


class WeightsMissing(ModelError):
    """Pretrained weights are not available locally and cannot be downloaded."""


class UnsafePath(WorkbenchError):
    """A path resolves outside the roots the workbench may read."""
