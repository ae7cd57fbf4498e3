"""gptclf: turn a pretrained GPT-2 into a text classifier."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gptclf")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
