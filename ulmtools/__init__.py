"""ulmtools: deep-learning Ultrasound Localization Microscopy in 2D and 3D.

The package is a library first; the ``ulm`` command line is a thin layer over it.
Each pipeline stage lives in its own module and reads and writes Zarr stores
through :mod:`ulmtools.store`.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# Idle OpenMP threads spin by default; beside one competing process that made the
# sparse engine 7.6x slower on 2 threads (measured). The CLI and a notebook's
# `import ulmtools` get the same policy; it takes effect when torch has not loaded
# yet, and a choice the user made in the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    __version__ = version("ulm-toolchain")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+unknown"

__all__ = ["__version__"]
