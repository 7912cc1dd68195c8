"""Exceptions with messages meant for people (CLI one-liners, node warnings)."""


class InputError(ValueError):
    """A caller-supplied input (image, box, intrinsics) cannot be used; the message says why."""


class WeightsError(RuntimeError):
    """Weights or model assets are missing, malformed or do not match the model; the message names the file."""
