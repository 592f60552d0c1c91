"""The XLA:CPU setting bmjax applies when it is imported, before JAX starts a backend.

jaxlib 0.10's XLA:CPU hands convolutions to YNNPACK by default. Its Eigen convolutions run bmjax's convolutional
networks' train steps 1.3-1.9x faster on CPU (ResNet-18 and -20, the seed CNN, AlexNet, DCGAN: benchmarks/README.md),
so bmjax asks for those; dots stay on YNNPACK, which is the faster there. A user's own setting of the flag in
XLA_FLAGS wins, and XLA_FLAGS is left alone on jaxlib releases not known to have the flag (XLA aborts on a flag it does
not know). GPUs and TPUs ignore the flag.
"""

import importlib.metadata
import os
from typing import MutableMapping, Optional

FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN_CONVOLUTIONS = f"{FLAG}=-individual_convolution"
KNOWN_JAXLIB = ((0, 10), (0, 11))  # (major, minor) of releases with the flag: 0.10 measured here, 0.11 has it too


def _jaxlib_release() -> Optional[tuple[int, int]]:
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def prefer_eigen_convolutions(environ: MutableMapping[str, str] = os.environ,
                              jaxlib_release: Optional[tuple[int, int]] = None) -> bool:
    """Adds EIGEN_CONVOLUTIONS to `environ`'s XLA_FLAGS unless the flag is there already or jaxlib is not one of
    KNOWN_JAXLIB; True when it was added. It takes effect if no JAX backend has started yet."""
    flags = environ.get("XLA_FLAGS", "")
    if FLAG in flags or (jaxlib_release or _jaxlib_release()) not in KNOWN_JAXLIB:
        return False
    environ["XLA_FLAGS"] = f"{flags} {EIGEN_CONVOLUTIONS}".strip()
    return True
