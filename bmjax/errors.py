"""The one error type a user sees: a one-line message saying what is wrong and how to fix it."""

import functools
import os
import signal
import sys


class UsageError(Exception):
    """Bad input (a flag, a name, a file, a checkpoint).

    Command-line entry points print `error: <message>` and exit with status 2,
    without a traceback; library callers get an ordinary exception.
    """


def exit_on_usage_error(main):
    """Wraps an absl `main` so that a UsageError becomes one line on stderr and exit status 2, and an interrupt one
    line and 128 + its signal's number (130 for Ctrl-C, 143 for SIGTERM)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            _exit_now(2)
        except KeyboardInterrupt as e:  # the runner's Interrupted says where its checkpoint is
            message = getattr(e, "message", "interrupted; nothing more was saved (a rerun resumes from the newest "
                                            "checkpoint, if there is one)")
            print(message, file=sys.stderr, flush=True)
            sys.exit(128 + getattr(e, "signum", signal.SIGINT))

    return wrapped


def _exit_now(status: int) -> None:
    """Exits without the interpreter's teardown: reads that orbax and TensorStore still had in flight when a
    damaged checkpoint failed would report their own failures there, saying nothing the error line did not.
    Everything bmjax writes is closed by then (the runner closes its checkpoints and logs as the error leaves it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
