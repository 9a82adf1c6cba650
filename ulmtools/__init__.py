"""ulmtools: deep-learning Ultrasound Localization Microscopy in 2D and 3D.

The package is a library first; the ``ulm`` command line is a thin layer over it.
Each pipeline stage lives in its own module and reads and writes Zarr stores
through :mod:`ulmtools.store`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ulm-toolchain")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+unknown"

__all__ = ["__version__"]
