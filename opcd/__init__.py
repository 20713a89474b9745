"""On-Policy Context Distillation: move a prompt's knowledge into a model's weights."""

from opcd.errors import OpcdError
from opcd.versions import __version__

__all__ = ["OpcdError", "__version__"]
