"""The package's error types: library code raises them, the command line reports them.

`cmtnet` prints a `CommandError` as one line on stderr, without a traceback, and exits with its
`exit_status`; every other exception is a bug and keeps its traceback.
"""

__all__ = ['CommandError', 'InputError']


class CommandError(Exception):
    """An error the command line reports as a one-line message (no traceback) and an exit status."""
    exit_status = 1


class InputError(CommandError, ValueError):
    """Bad input from the user (an option, a config file, a data folder, a checkpoint).

    The message must name the bad value and what was expected.
    """
    exit_status = 2
