"""The exceptions dhp raises. Every message says what was wrong, where and with which value."""

__all__ = ["Error", "InvalidArgumentError", "InvalidInputError", "InputTypeError",
           "DoesNotFitError", "CommunicationError", "InternalError"]


class Error(Exception):
    """Base class of every error dhp raises."""


class InvalidArgumentError(Error, ValueError):
    """An argument outside its domain (``llm_tp=-1``, a plan that does not match its batch)."""


class InvalidInputError(Error, ValueError):
    """A description (batch, plan, cluster, model, file) is malformed or inconsistent.

    The message names the field by its path, e.g. ``batch.samples[3].visuals[0].tokens``.
    """


class InputTypeError(InvalidInputError, TypeError):
    """A value of the wrong Python type in a description or an argument."""


class DoesNotFitError(Error, ValueError):
    """A sample or layout cannot fit in device memory whatever the plan."""


class CommunicationError(Error, RuntimeError):
    """A collective failed or timed out, or a peer process died."""


class InternalError(Error, RuntimeError):
    """A broken invariant inside dhp (a bug: please report it with the message)."""
