"""User-facing errors: each carries a one-line message naming the file or key and the problem."""


class FastInstError(Exception):
    """Base class for mistakes in what the user handed us (files, names, options). The CLI prints it on one line."""


class CheckpointError(FastInstError):
    """A weights file that cannot be read or does not fit the model."""


class ImageReadError(FastInstError):
    """An image file that cannot be decoded."""


class DatasetError(FastInstError):
    """A dataset folder, annotation file or entry that cannot be used."""
