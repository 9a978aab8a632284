"""`hydra/launcher=subprocess`: every job of a multirun runs in a fresh Python process, so no
JAX state (compiled programs, device buffers, jax.monitoring listeners) and no W&B run leaks
from one job to the next; all jobs of one multirun share a W&B group (the sweep dir's name).
After the last job, gemma_tool_use.report writes the sweep summary (table + plot)."""

import json
import logging
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@dataclass
class SubprocessLauncherConf:
    _target_: str = "hydra_plugins.gemma_tool_use_searchpath.launcher.SubprocessLauncher"


ConfigStore.instance().store(
    group="hydra/launcher", name="subprocess", node=SubprocessLauncherConf, provider="gemma_tool_use"
)


def _job_dirname(idx: int, overrides: Sequence[str]) -> str:
    # No '=' or ',' in the name: it is passed back as a hydra.run.dir override.
    parts = [
        o.replace("=", "-")
        for o in filter_overrides(overrides)
        if not o.startswith(("experiments=", "tracking", "hydra."))
    ]
    return f"{idx}_" + (re.sub(r"[^A-Za-z0-9._+-]", "_", "__".join(parts))[:120] or "job")


class SubprocessLauncher(Launcher):
    def __init__(self) -> None:
        super().__init__()
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.config = config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        group = sweep_dir.name
        log.info("Launching %d jobs, one process each, in %s", len(job_overrides), sweep_dir)
        runs: List[JobReturn] = []
        for i, overrides in enumerate(job_overrides):
            idx = initial_job_idx + i
            job_dir = sweep_dir / _job_dirname(idx, overrides)
            args = list(overrides) + [f"hydra.run.dir={job_dir}", f"hydra.job.num={idx}"]
            if not any(o.startswith("tracking.group=") for o in overrides):
                args.append(f"tracking.group={group}")
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            proc = subprocess.run([sys.executable, "-m", "gemma_tool_use", *args])
            ret = JobReturn()
            ret.overrides = list(overrides)
            ret.working_dir = str(job_dir)
            result = job_dir / "job_result.json"
            if proc.returncode == 0 and result.is_file():
                ret.status = JobStatus.COMPLETED
                ret.return_value = json.loads(result.read_text()).get("value")
            else:
                ret.status = JobStatus.FAILED
                ret.return_value = RuntimeError(f"job {idx} exited with code {proc.returncode}; see {job_dir}")
                log.error("job %d failed (exit %d); the sweep goes on", idx, proc.returncode)
            runs.append(ret)
        from gemma_tool_use.orchestration.sweeps import write_sweep_summary

        write_sweep_summary(sweep_dir)
        return runs
