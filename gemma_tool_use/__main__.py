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
        return run_stage(cfg)
    except StageNotBuilt as e:
        log.error("%s", e)
        sys.exit(3)
    except (WeightsError, PredictInputError, BfclError) as e:  # user-facing input problems: no traceback
        log.error("%s", e)
        sys.exit(4)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
