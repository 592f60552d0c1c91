"""What a run tells its user as it goes: process 0 speaks for all. Results go to stdout, warnings to stderr."""

import sys

import jax


def say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def warn(message: str) -> None:
    if jax.process_index() == 0:
        print(f"warning: {message}", file=sys.stderr, flush=True)
