"""resnet-deploy: He et al. 2016 residual networks from training to production."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resnet-deploy")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
