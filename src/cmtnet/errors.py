"""The package's error types: library code raises them, the command line reports them.

`cmtnet` prints a `CommandError` as one line on stderr, without a traceback, and exits with its
`exit_status`; every other exception is a bug and keeps its traceback. A near miss (a mistyped name or
path) gets a suggestion in its message: `did_you_mean`, `did_you_mean_path`.
"""
import difflib
import os
from pathlib import Path
from typing import Iterable, Optional, Union

__all__ = ['CommandError', 'InputError', 'did_you_mean', 'did_you_mean_path']


class CommandError(Exception):
    """An error the command line reports as a one-line message (no traceback) and an exit status."""
    exit_status = 1


class InputError(CommandError, ValueError):
    """Bad input from the user (an option, a config file, a data folder, a checkpoint).

    The message must name the bad value and what was expected.
    """
    exit_status = 2


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' with the one of `choices` closest to `value` (difflib), or '' where none is close:
    the end of an error message about a mistyped name."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f'; did you mean {close[0]}?' if close else ''


def _nearest_path(path: Path) -> Optional[Path]:
    """`path` with each part that does not exist replaced by the closest entry of its folder, or None."""
    if path.exists():
        return path
    if path.parent == path:
        return None
    parent = _nearest_path(path.parent)
    try:
        names = os.listdir(parent) if parent is not None else []
    except OSError:  # not a folder, or not readable
        return None
    close = difflib.get_close_matches(path.name, names, n=1)
    return parent / close[0] if close else None


def did_you_mean_path(path: Union[str, Path]) -> str:
    """'; did you mean X?' with the existing path closest to `path`, a path that does not exist (each missing
    part matched among the entries of its folder), or '': the end of an error message about a missing file."""
    nearest = _nearest_path(Path(path))
    return f'; did you mean {nearest}?' if nearest not in (None, Path(path)) else ''
