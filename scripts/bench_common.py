"""What the benchmark scripts share: the real Gemma 3 270M with its LoRA adapters, one jitted
LoRA train step (our trainer, as the sft stages run it) and the facts to write beside a figure."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compose_real(*overrides: str):
    """The composed config of the real model (model=gemma3_270m) plus `overrides`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["model=gemma3_270m", *overrides])


def real_model(*overrides: str, training: bool = True):
    """(cfg, mesh, model): the real weights, LoRA applied as configured; host memory set up as
    `python -m gemma_tool_use` sets it for a training (or another) stage (host_memory), so the
    figures are the CLI's."""
    from gemma_tool_use.utils.host_memory import tune_malloc, wants_tuning
    from gemma_tool_use.utils.mesh import build_mesh

    if wants_tuning(training):
        tune_malloc()
    from gemma_tool_use.model.loading import build_model

    cfg = compose_real(*overrides)
    mesh = build_mesh(cfg.tpu)
    return cfg, mesh, build_model(cfg.model, mesh, 0)


def lora_train_step(cfg, model, loss_fn=None, max_steps: int = 10**6):
    """The jitted train step of our SftTrainer (call it inside `with mesh:`): batch -> (loss, ...)."""
    from tunix.sft import peft_trainer
    from tunix.sft.metrics_logger import MetricsLogger

    from gemma_tool_use.training.loss import completion_loss
    from gemma_tool_use.training.metrics import Throughput
    from gemma_tool_use.training.optimizer import make_optimizer
    from gemma_tool_use.training.sft_trainer import SftTrainer

    opt, _ = make_optimizer(cfg.optim, 100)
    trainer = SftTrainer(
        model,
        opt,
        peft_trainer.TrainingConfig(eval_every_n_steps=10**6, max_steps=max_steps),
        metrics_logger=MetricsLogger(),
        throughput=Throughput(),
    )
    trainer.with_loss_fn(loss_fn or completion_loss)
    return trainer.jit_train_and_eval_step()[0]


def run_facts() -> dict:
    """Machine, JAX version and commit, written beside every figure."""
    import jax

    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
    }


def hlo_dump_flags(dump_dir: str, module_re: str) -> str:
    """XLA_FLAGS that dump the optimized HLO of the matching jitted modules (for `op_table`);
    set them before jax is imported."""
    return f"--xla_dump_to={dump_dir} --xla_dump_hlo_module_re={module_re} --xla_dump_hlo_pass_re=^$"


def op_table(trace_dir: str, dump_dir: str, keep=lambda count: True, module: int | None = None) -> list[dict]:
    """Per-op time from a jax.profiler trace (XLA:CPU records every thunk), grouped by op kind,
    the JAX op name XLA kept in the optimized HLO (`hlo_dump_flags`) and the output shape; `keep`
    selects ops by how often they ran (e.g. the body of a 64-step loop); `module` picks the n-th
    dumped module for the names when several compiled programs share one name (generate's
    `jit_run`). ms: summed over the trace; `runs_each`: how often each op of the group ran."""
    import collections
    import glob
    import gzip
    import json
    import re

    names = {}
    files = sorted(glob.glob(f"{dump_dir}/module_*after_optimizations.txt"))
    for f in files if module is None else files[module : module + 1]:
        module_name = re.sub(r"^module_\d+\.", "", os.path.basename(f)).replace(".cpu_after_optimizations.txt", "")
        for line in open(f):
            m = re.match(r"\s+(?:ROOT )?%(\S+) = (\S+) (.*)", line)
            if m:
                name = re.search(r'op_name="([^"]*)"', m.group(3))
                names[(module_name, m.group(1))] = (
                    re.sub(r"jit\([^)]*\)/", "", name.group(1)) if name else "?",
                    m.group(2),
                )
    trace = sorted(glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz"))[-1]
    total, count = collections.Counter(), collections.Counter()
    for e in json.load(gzip.open(trace))["traceEvents"]:
        a = e.get("args", {})
        if e.get("ph") == "X" and a.get("hlo_op"):
            total[(a.get("hlo_module"), a["hlo_op"])] += e["dur"]
            count[(a.get("hlo_module"), a["hlo_op"])] += 1
    ms, ops, calls = collections.Counter(), collections.Counter(), {}
    for key, us in total.items():
        if keep(count[key]):
            name, shape = names.get(key, ("?", "?"))
            group = (re.sub(r"[._]?[0-9]+$", "", key[1]), name, shape)
            ms[group] += us / 1000
            ops[group] += 1
            calls[group] = count[key]
    return [
        {"kind": k[0], "op": k[1], "shape": k[2], "ops": ops[k], "runs_each": calls[k], "ms": round(v, 2)}
        for k, v in ms.most_common()
    ]
