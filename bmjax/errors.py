"""The one error type a user sees: a one-line message saying what is wrong and how to fix it."""

import functools
import sys


class UsageError(Exception):
    """Bad input (a flag, a name, a file, a checkpoint).

    Command-line entry points print `error: <message>` and exit with status 2,
    without a traceback; library callers get an ordinary exception.
    """


def exit_on_usage_error(main):
    """Wraps an absl `main` so that a UsageError becomes one line on stderr and exit status 2."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapped
