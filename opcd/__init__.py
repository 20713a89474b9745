"""On-Policy Context Distillation: move a prompt's knowledge into a model's weights."""

from opcd.errors import OpcdError

__version__ = "0.1.0"
__all__ = ["OpcdError", "__version__"]
