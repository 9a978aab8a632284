"""Device/mesh setup from the `tpu` group, including a simulated multi-device CPU mesh."""

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.mesh import MeshError, build_mesh, resolve_axis_sizes

from conftest import REPO, run_cli


def test_resolve_axis_sizes():
    assert resolve_axis_sizes([-1, 1], 8) == (8, 1)
    assert resolve_axis_sizes([-1, 2], 8) == (4, 2)
    assert resolve_axis_sizes([2, 2], 4) == (2, 2)
    with pytest.raises(MeshError, match="need 4 devices"):
        resolve_axis_sizes([2, 2], 8)
    with pytest.raises(MeshError, match="do not divide"):
        resolve_axis_sizes([-1, 3], 8)


def test_tpu_layout_on_cpu_fails_with_a_clear_message():
    import jax

    if jax.default_backend() != "cpu":
        pytest.skip("needs a CPU-only host")
    for name, platform in (("v5litepod_8", "tpu"), ("gpu", "gpu")):
        cfg = OmegaConf.load(REPO / "conf" / "tpu" / f"{name}.yaml")
        with pytest.raises(MeshError) as e:
            build_mesh(cfg)
        msg = str(e.value)
        assert msg.startswith(
            f"tpu={name} needs platform '{platform}', but JAX runs on 'cpu' here (platforms JAX sees: cpu;"
        ), msg
        assert "choose tpu=cpu here" in msg and "\n" not in msg
    assert issubclass(MeshError, UserError)  # the CLI prints it as one line


SHARDING_CHECK = r"""
import json
from hydra import compose, initialize_config_dir
from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.utils.paths import conf_dir
from gemma_tool_use.utils.mesh import prepare_runtime, build_mesh
register_configs()
with initialize_config_dir(str(conf_dir()), version_base="1.3"):
    cfg = compose("config", overrides=["model=tiny", "model.train_token_ids=[]", "tpu.simulated_devices=4", "tpu.axis_sizes=[2,2]"])
prepare_runtime(cfg.tpu)
import jax, jax.numpy as jnp
from gemma_tool_use.model.loading import build_model
mesh = build_mesh(cfg.tpu)
model = build_model(cfg.model, mesh, 0)
emb = model.embedder.input_embedding.value
shard_shapes = sorted({tuple(s.data.shape) for s in emb.addressable_shards})
x = jnp.ones((4, 8), jnp.int32)
with mesh:
    logits, _ = model(x, jnp.broadcast_to(jnp.arange(8), (4, 8)), None, jnp.tril(jnp.ones((4, 8, 8), bool)))
print(json.dumps({"devices": jax.device_count(), "mesh": dict(mesh.shape), "emb": list(emb.shape),
                  "shards": shard_shapes, "n_shards": len(emb.addressable_shards),
                  "logits": list(logits.shape), "finite": bool(jnp.isfinite(logits).all())}))
"""


def test_simulated_devices_shard_the_model():
    r = subprocess.run([sys.executable, "-c", SHARDING_CHECK], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["mesh"] == {"fsdp": 2, "tp": 2}
    # Embedding (vocab, d) is annotated ('tp', 'fsdp'): each device holds a quarter.
    assert out["n_shards"] == 4 and out["shards"] == [[out["emb"][0] // 2, out["emb"][1] // 2]]
    assert out["logits"] == [4, 8, 262144] and out["finite"]


def test_tpu_v5e8_recipe_stage_runs_on_a_simulated_8_device_mesh(tmp_path):
    """The accelerator pipeline's first stage, as the pipeline launches it (common + recipe
    overrides; batch 64 cut to 8 for time), on 8 simulated CPU devices with the tiny model (2 steps)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.orchestration.pipeline import plan
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["pipeline=tpu_v5e8"])
    step = next(s for s in plan(cfg) if s["stage"] == "sft_small")
    assert list(cfg.pipeline.common) == ["tpu=v5litepod_8"] and "train.batch_size=64" in step["overrides"]
    r = run_cli(
        "stage=sft_small",
        *cfg.pipeline.common,
        *step["overrides"],
        "tpu=cpu",
        "tpu.simulated_devices=8",
        "tpu.axis_sizes=[8,1]",
        "model=tiny",
        "data=tiny",
        "train.batch_size=8",
        "train.max_steps=2",
        "train.eval_every_steps=2",
        "train.eval_batches=1",
        "eval.run_after_training=false",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mesh {'fsdp': 8, 'tp': 1} over 8 cpu devices" in r.stderr + r.stdout
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 2 and (tmp_path / "adapter" / "adapter_config.json").is_file()


DISTRIBUTED_CHECK = r"""
import json, socket
from omegaconf import OmegaConf
from gemma_tool_use.utils.mesh import prepare_runtime, build_mesh, _distributed_initialized
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
cfg = OmegaConf.create({"name": "cpu", "platform": "cpu", "axis_names": ["fsdp", "tp"], "axis_sizes": [-1, 1],
                        "simulated_devices": 2, "distributed": True, "coordinator_address": f"127.0.0.1:{port}",
                        "num_processes": 1, "process_id": 0, "num_hosts": 1, "chips_per_host": 0})
prepare_runtime(cfg)
import jax
mesh = build_mesh(cfg)
print(json.dumps({"initialized": _distributed_initialized(), "processes": jax.process_count(),
                  "devices": jax.device_count(), "mesh": dict(mesh.shape)}))
"""


def test_multi_host_initialisation_with_a_local_coordinator():
    """jax.distributed.initialize() through the tpu config (one process on loopback here)."""
    r = subprocess.run([sys.executable, "-c", DISTRIBUTED_CHECK], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"initialized": True, "processes": 1, "devices": 2, "mesh": {"fsdp": 2, "tp": 1}}


def test_compilation_cache_is_written_and_shared_across_processes(tmp_path):
    # Two fresh processes compile the same program: the first writes the persistent cache
    # entry, the second finds it (no second entry for the same program).
    code = f"""
import time, jax, jax.numpy as jnp
from omegaconf import OmegaConf
from gemma_tool_use.utils.mesh import prepare_runtime
prepare_runtime(OmegaConf.create({{"simulated_devices": 0, "platform": "cpu", "distributed": False,
                                   "compilation_cache_dir": "{tmp_path}/cache"}}))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(float(f(jnp.ones((64, 64)))))
"""
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
        assert out.returncode == 0, out.stderr[-2000:]
    entries = [p.name for p in (tmp_path / "cache").iterdir() if "-cache" in p.name or p.is_file()]
    assert entries, "no compilation cache entries written"
    assert len([e for e in entries if e.startswith("jit__lambda")]) == 1, entries


def _losses(run_dir):
    recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in recs if "train/loss" in r}, {
        r["step"]: r["eval/loss"] for r in recs if "eval/loss" in r
    }


def test_two_processes_train_data_parallel_with_the_losses_of_one_process(tmp_path):
    """Multi-host for real: two local CPU processes (localhost coordinator, gloo collectives), each
    feeding its half of every global batch of 4, train 3 LoRA steps; the losses equal one process
    training on the whole batches, the checkpoints and the adapter are written once, by process 0."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    common = [
        "experiments=tiny_smoke",
        "tracking=disabled",
        "train.batch_size=4",
        "train.max_steps=3",
        "train.checkpoint_every_steps=3",
        "train.eval_every_steps=3",
    ]
    multi = tmp_path / "multi"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gemma_tool_use",
                *common,
                f"hydra.run.dir={multi}",
                "tpu.distributed=true",
                "tpu.compilation_cache_dir=null",  # the cache is the single run's; two writers race
                f"tpu.coordinator_address=127.0.0.1:{port}",
                "tpu.num_processes=2",
                f"tpu.process_id={i}",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outs)
    single = tmp_path / "single"
    r = run_cli(*common, f"hydra.run.dir={single}")
    assert r.returncode == 0, r.stderr[-3000:]

    assert "mesh {'fsdp': 2, 'tp': 1} over 2 cpu devices (2 process(es))" in outs[0]
    (train_m, eval_m), (train_s, eval_s) = _losses(multi), _losses(single)
    assert sorted(train_m) == sorted(train_s) == [1, 2, 3]
    for step in train_s:
        assert abs(train_m[step] - train_s[step]) <= 1e-4 * abs(train_s[step]), (step, train_m, train_s)
    assert eval_m.keys() == eval_s.keys() and all(abs(eval_m[k] - eval_s[k]) <= 1e-4 * abs(eval_s[k]) for k in eval_s)
    names = sorted(p.name for p in (multi / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (single / "checkpoints").iterdir()) and "3" in names
    assert not (multi / "process_1" / "checkpoints").exists()
    assert (multi / "adapter" / "adapter.safetensors").is_file() and (multi / "train_summary.json").is_file()
    assert not (multi / "process_1" / "adapter").exists() and not (multi / "process_1" / "train_summary.json").exists()
