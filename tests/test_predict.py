"""`stage=predict` on JSONL input, with LoRA adapters from an SFT run."""

import json

import jax
import numpy as np
from flax import nnx
from omegaconf import OmegaConf

from conftest import run_cli


def test_predict_with_sft_lora_checkpoint_and_bad_rows(tmp_path, tokenizer):
    sft_dir = tmp_path / "sft"
    r = run_cli("experiments=tiny_smoke", "train.max_steps=2", "model.lora.rank=2", "tracking=disabled",
                f"hydra.run.dir={sft_dir}")
    assert r.returncode == 0, r.stderr[-3000:]

    rows = [{"tools": [{"name": "get_weather", "description": "d", "parameters": {"type": "object"}}],
             "messages": [{"role": "user", "content": "Weather in Oslo?"}]},
            {"messages": [{"role": "user", "content": "Hi"}]}]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(rows[0]) + "\n{not json\n"
                   + json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
                   + "\n" + json.dumps(rows[1]) + "\n")
    out_dir = tmp_path / "pred"
    # model.lora.rank=4 (tiny default) differs from the run's rank 2: adopted from the run's config.
    r = run_cli("stage=predict", "model=tiny", f"predict.input_file={src}", f"model.lora_checkpoint={sft_dir}",
                "generation.max_new_tokens=8", "tracking=disabled", f"hydra.run.dir={out_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr + r.stdout
    assert "in.jsonl:2" in log and "in.jsonl:3" in log  # malformed rows named by line, skipped
    assert "loaded LoRA adapters (rank 2)" in log
    preds = [json.loads(l) for l in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["line"] for p in preds] == [1, 4]
    assert all(set(p) >= {"raw_text", "tool_calls", "parse_errors", "prompt_tokens", "stop_reason"} for p in preds)
    assert json.loads((out_dir / "predict_summary.json").read_text())["skipped_rows"] == 2


def test_lora_checkpoint_restores_trained_adapters(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config import register_configs
    from gemma_tool_use.mesh import build_mesh
    from gemma_tool_use.model import build_model
    from gemma_tool_use.paths import conf_dir

    sft_dir = tmp_path / "sft"
    r = run_cli("experiments=tiny_smoke", "train.max_steps=2", "tracking=disabled", f"hydra.run.dir={sft_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "model.train_token_ids=[]"])
    mesh = build_mesh(cfg.tpu)
    fresh = nnx.state(build_model(cfg.model, mesh, 0), nnx.LoRAParam)
    cfg.model.lora_checkpoint = str(sft_dir / "checkpoints" / "2")
    loaded = nnx.state(build_model(cfg.model, mesh, 0), nnx.LoRAParam)
    diffs = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(loaded))]
    assert any(diffs), "restored adapters differ from a fresh LoRA init"


def test_sft_full_initialises_from_an_sft_small_run_by_experiment_name(tmp_path):
    r = run_cli("experiments=tiny_smoke", "train.max_steps=2", "model.train_token_ids=[105,106]", "tracking=disabled",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("experiments=tiny_smoke", "stage=sft_full", "train.init_from=tiny_smoke", "train.max_steps=1",
                "tracking=disabled", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr + r.stdout
    assert "initialising from outputs/sft_small/" in log and "loaded LoRA adapters (rank 4)" in log
    r = run_cli("stage=sft_full", "model=tiny", "data=tiny", "train.init_from=no_such_experiment", "tracking=disabled", cwd=tmp_path)
    assert r.returncode != 0 and "neither a checkpoint path nor an experiment" in r.stderr + r.stdout
