"""lungxray: train, evaluate, explain and serve chest X-ray classifiers.

Decision support only: lungxray's outputs support, and never replace, a radiologist's reading.
"""

from lungxray.errors import (
    ConfigError,
    DataError,
    ImageReadError,
    LungXrayError,
    ModelError,
    RunError,
)

__version__ = "0.1.0"

DISCLAIMER = (
    "Decision support only: this output is not a diagnosis and does not replace a radiologist's "
    "reading of the image."
)

__all__ = [
    "DISCLAIMER",
    "ConfigError",
    "DataError",
    "ImageReadError",
    "LungXrayError",
    "ModelError",
    "RunError",
    "__version__",
]
