"""Entry point: `python -m gemma_tool_use stage=<name> [overrides]`.

Composes the typed config (conf/ + experiments/), checks it, then hands it to the stage
runner named by `stage.name`; the runners live in gemma_tool_use/stages/ (see STAGES there).
Nothing heavy (JAX, tunix) is imported before the config is known to be valid, so `--help`,
`--cfg job` and config errors answer in seconds.

Order: compose (Hydra: unknown keys, wrong types) -> `check_config` (the range of every value)
-> `preflight` (the files, runs and checkpoints the config names; still no JAX) -> the stage.
A user error (gemma_tool_use.utils.errors.UserError: config values, data files, weights, ...) is reported as
ONE line, `error: <message>`, on stderr and in the run's log file, with a non-zero exit: 2 for
config values, 3 for a stage not built, 4 for other inputs (files, weights, hardware).
Full traceback: GTU_VERBOSE=1 (or Hydra's HYDRA_FULL_ERROR=1).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gemma_tool_use.config.checks import check_config
from gemma_tool_use.config.schema import TRAINING_STAGES, register_configs
from gemma_tool_use.orchestration.learning_curve import CHILD_ENV as CURVE_CHILD_ENV
from gemma_tool_use.orchestration.learning_curve import run_learning_curve
from gemma_tool_use.orchestration.pipeline import run_pipeline
from gemma_tool_use.orchestration.preflight import preflight
from gemma_tool_use.stages import run_stage
from gemma_tool_use.utils.errors import UserError, one_line
from gemma_tool_use.utils.host_memory import tune_malloc, wants_tuning
from gemma_tool_use.utils.paths import conf_dir

log = logging.getLogger("gemma_tool_use")

register_configs()

# Full tracebacks of user errors: GTU_VERBOSE=1 (or Hydra's own HYDRA_FULL_ERROR=1).
VERBOSE_ENV = ("GTU_VERBOSE", "HYDRA_FULL_ERROR")


def report_user_error(e: BaseException, exit_code: int) -> None:
    """`error: <message>` as ONE line on stderr (and in the run's log file); exit non-zero.
    The traceback only when GTU_VERBOSE=1 or HYDRA_FULL_ERROR=1."""
    line = f"error: {one_line(e)}"
    if any(os.environ.get(k, "") not in ("", "0") for k in VERBOSE_ENV):
        traceback.print_exc()
    print(line, file=sys.stderr, flush=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None)
    for h in logging.getLogger().handlers:  # the run dir's log file, not the console (printed above)
        if isinstance(h, logging.FileHandler):
            h.handle(record)
    sys.exit(exit_code)


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    # absl (tunix, orbax) logs every checkpoint file operation at INFO; keep warnings only.
    logging.getLogger("absl").setLevel(logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # "no TPU found" on CPU hosts

    try:
        check_config(cfg)  # values: ranges and agreement (pure)
        if cfg.get("pipeline") is not None:  # `pipeline=<recipe>`: each stage in its own process
            return run_pipeline(cfg)
        if cfg.get("curve") is not None and not os.environ.get(CURVE_CHILD_ENV):  # one SFT run in slices
            return run_learning_curve(cfg)
        preflight(cfg)  # the files and runs the config names: before JAX loads
        # Before JAX allocates: in training, glibc returns XLA's freed buffers (host_memory.py).
        if wants_tuning(str(cfg.stage.name) in TRAINING_STAGES) and (tuning := tune_malloc()):
            log.info("host memory: %s (GTU_MALLOC_TUNING=0 leaves glibc's default)", tuning)
        value = run_stage(cfg)
        _write_job_result(value)
        return value
    except UserError as e:  # user-facing input problems (StageNotBuilt: exit 3): one line, no traceback
        report_user_error(e, getattr(e, "exit_code", 4))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM (interrupt.Stopped): the stage saved its work
        signal_name = getattr(e, "signal_name", "SIGINT")
        print(
            f"stopped ({signal_name}); re-run the same command (same hydra.run.dir) to resume",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(getattr(e, "exit_code", 130))


def _write_job_result(value) -> None:
    """The stage's return value beside its outputs (read by the subprocess launcher)."""
    out = Path(HydraConfig.get().runtime.output_dir) / "job_result.json"
    out.write_text(
        json.dumps(
            {"value": value if isinstance(value, (int, float)) or value is None else str(value), "pid": os.getpid()}
        )
    )


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
