"""Entry point: `python -m gemma_tool_use stage=<name> [overrides]`.

Composes the typed config (conf/ + experiments/), checks it, then hands it to the stage
runner named by `stage.name`; the runners live in gemma_tool_use/stages/ (see STAGES there).
Nothing heavy (JAX, tunix) is imported before the config is known to be valid, so `--help`,
`--cfg job` and config errors answer in seconds.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from gemma_tool_use.config import ConfigValueError, check_config, register_configs
from gemma_tool_use.paths import conf_dir

log = logging.getLogger("gemma_tool_use")

register_configs()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from gemma_tool_use.bfcl import BfclError
    from gemma_tool_use.runs import HandoffError
    from gemma_tool_use.stages import StageNotBuilt, run_stage
    from gemma_tool_use.stages.predict import PredictInputError
    from gemma_tool_use.weights import WeightsError

    # absl (tunix, orbax) logs every checkpoint file operation at INFO; keep warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" on CPU hosts

    try:
        check_config(cfg)
    except ConfigValueError as e:
        log.error("config error: %s", e)
        sys.exit(2)
    try:
        value = run_stage(cfg)
        _write_job_result(value)
        return value
    except StageNotBuilt as e:
        log.error("%s", e)
        sys.exit(3)
    except (WeightsError, PredictInputError, BfclError, HandoffError) as e:  # user-facing input problems: no traceback
        log.error("%s", e)
        sys.exit(4)


def _write_job_result(value) -> None:
    """The stage's return value beside its outputs (read by the subprocess launcher)."""
    import json
    import os
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    out = Path(HydraConfig.get().runtime.output_dir) / "job_result.json"
    out.write_text(json.dumps({"value": value if isinstance(value, (int, float)) or value is None else str(value),
                               "pid": os.getpid()}))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
