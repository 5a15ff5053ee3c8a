"""Errors fxprune raises on purpose, each saying what went wrong and what to try."""


class FxpruneError(Exception):
    """Base class of every error fxprune raises deliberately."""


class TraceError(FxpruneError):
    """torch.fx could not trace the model (data-dependent control flow, unsupported Python)."""


class InputError(FxpruneError, ValueError):
    """The example inputs (or other user arguments) do not fit the model."""


class VerificationError(FxpruneError):
    """A constructed subnet does not compute what the group-sparse dense model computes."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): the fact, without the
    graph dumps and hints torch appends below it."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
