"""The one base class of user-facing errors.

A `UserError` is a problem with what the user asked for (a config value, a path, an input
file, the hardware named by `tpu=`), not a bug: the CLI (`gemma_tool_use/__main__.py`) prints
it as one line, `error: <message>`, and exits with its `exit_code`; the full traceback only
with GTU_VERBOSE=1 or HYDRA_FULL_ERROR=1. Its message must name the config key or file:line
the user has to change. Nothing here imports JAX.

Subclasses: config.ConfigValueError (exit 2), weights.WeightsError, runs.HandoffError,
bfcl.BfclError, mesh.MeshError, model.LoraTargetError, stages.predict.PredictInputError (exit 4).
"""

from __future__ import annotations


class UserError(Exception):
    """A user-facing input problem; the message says what to change."""

    exit_code: int = 4


def one_line(message: object) -> str:
    """A message on one line (embedded newlines become ' | '), never empty."""
    text = " | ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return text or type(message).__name__
