"""Exceptions with messages meant for people (CLI one-liners, node warnings)."""


class InputError(ValueError):
    """A caller-supplied input (image, box, intrinsics) cannot be used; the message says why."""


class WeightsError(RuntimeError):
    """Weights or model assets are missing, malformed or do not match the model; the message names the file."""


class RuntimeUnavailable(RuntimeError):
    """A backbone runtime library (e.g. TensorRT) is not installed or too old; the message says how to install it."""


# What a wrong configuration raises (bad option values included: ValueError), reported as one line by the CLI and by
# the node's `configure`.
CONFIG_ERRORS: tuple[type[Exception], ...] = (WeightsError, RuntimeUnavailable, ValueError, FileNotFoundError)
