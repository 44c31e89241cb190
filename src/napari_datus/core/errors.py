"""The one exception type the pipeline raises for problems a user can fix."""


class DatusError(Exception):
    """A clear, user-facing problem with inputs, weights, parameters or outputs.

    The message names the offending file, value or parameter; the command line
    prints it as one line and the napari widgets show it as a notification.
    """


class SetupError(DatusError):
    """A problem with what every image needs (the model, its weights, the device): it stops
    the whole run instead of skipping images one by one."""
