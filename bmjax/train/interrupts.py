"""Interrupts while training: SIGINT (Ctrl-C) and SIGTERM (a pre-empted TPU VM's) stop a run after a checkpoint."""

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from bmjax import console


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after saving a checkpoint; the command-line exit status is 128 + signal."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.message = signum, message


class Interrupts:
    """While training, SIGINT and SIGTERM (a pre-empted TPU VM's) ask the loop to save a checkpoint at the end of
    the current segment and stop; a second SIGINT stops at once. All processes stop at the same segment."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received, self.previous = 0, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        console.say(f"\n{signal.Signals(signum).name}: saving a checkpoint at the end of this segment, then "
                    "stopping (Ctrl-C again stops at once)")

    def requested(self) -> int:
        """The signal that asked to stop (0: none), agreed by every process."""
        if jax.process_count() == 1:
            return self.received
        return int(np.max(multihost_utils.process_allgather(np.int32(self.received))))
