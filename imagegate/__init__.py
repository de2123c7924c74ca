"""imagegate: one OpenAI-compatible Images API in front of every image model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("imagegate")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
