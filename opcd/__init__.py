"""On-Policy Context Distillation: move a prompt's knowledge into a model's weights.

`opcd.distill(model, context, prompts, ...)` runs the whole `distill-prompt` pipeline from Python (`opcd.api`).
"""

from opcd.api import Result, distill
from opcd.errors import OpcdError
from opcd.versions import __version__

__all__ = ["OpcdError", "Result", "__version__", "distill"]
