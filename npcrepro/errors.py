"""The project's exception types.

Every error a user can cause with bad input is one of these, with a message that names the file (or
parameter) and what is wrong, so the CLI can print it on one line and exit non-zero: with
``exit_code`` (2 for bad input or parameters, 1 for other failures).
"""
from __future__ import annotations


class NpcreproError(Exception):
    """Base class of the errors npcrepro raises on purpose."""

    exit_code = 1


class DataError(NpcreproError, ValueError):
    """Bad or inconsistent input data: missing or corrupt file, geometry mismatch, undeclared labels,
    non-finite intensities, missing channel, wrong dimensionality, bad dataset layout."""

    exit_code = 2


class ParameterError(NpcreproError, ValueError):
    """An unknown parameter name or an invalid parameter value (notebooks, CLI, profiles)."""

    exit_code = 2


def did_you_mean(name, valid) -> str:
    """" Did you mean 'x'?" for the closest of ``valid`` to a misspelt ``name`` (difflib's ratio at
    least 0.6), "" when none is close; appended to an "unknown ..." message."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
