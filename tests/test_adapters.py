"""The portable adapter (gemma_tool_use/adapters.py): export -> model.lora_checkpoint gives the same
logits; its config drives the architecture check and the adapter shape; damage is refused."""

import json

import numpy as np
import pytest


def _cfg(overrides=()):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["model=tiny", "model.dtype=float32", *overrides])


def _logits(model):
    import jax.numpy as jnp

    tokens = jnp.asarray([[2, 105, 40, 41, 42, 106, 43, 44]], jnp.int32)
    out = model(tokens, jnp.arange(8)[None], None, jnp.tril(jnp.ones((1, 8, 8), bool)))
    return np.asarray(out[0] if isinstance(out, tuple) else out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model with rank-4 LoRA and rows [105, 106], every trainable leaf random, exported."""
    import jax
    from flax import nnx

    from gemma_tool_use.model.adapters import export_adapter
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    cfg = _cfg(["model.lora.rank=4", "model.train_token_ids=[105,106]"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    leaves, treedef = jax.tree_util.tree_flatten(nnx.state(model, nnx.LoRAParam))
    key = jax.random.key(3)
    nnx.update(
        model,
        jax.tree_util.tree_unflatten(
            treedef,
            [0.05 * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype) for i, x in enumerate(leaves)],
        ),
    )
    out = export_adapter(model, tmp_path_factory.mktemp("a") / "adapter", cfg.model, step=7, source="test")
    return out, _logits(model)


def test_exported_adapter_loads_with_its_own_shape_and_same_logits(exported):
    from gemma_tool_use.model.adapters import CONFIG, read_adapter_config
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    path, logits = exported
    info = read_adapter_config(path)
    assert info["model"]["lora"]["rank"] == 4 and info["model"]["train_token_ids"] == [105, 106]
    assert info["step"] == 7 and info["num_parameters"] > 0
    assert (path / "adapter.safetensors").stat().st_size < 2_000_000 and (path / CONFIG).is_file()
    # the default model.lora (rank 16, no rows) is overridden by the adapter's own shape
    cfg = _cfg([f"model.lora_checkpoint={path}"])
    loaded = build_model(cfg.model, build_mesh(cfg.tpu), 0)  # the tiny base is random: same seed
    np.testing.assert_allclose(_logits(loaded), logits, rtol=1e-6, atol=1e-6)
    base = build_model(_cfg().model, build_mesh(cfg.tpu), 0)
    assert np.abs(_logits(base) - logits).max() > 1e-3  # the adapter does change the model


def test_adapter_config_drives_the_architecture_check(exported, tmp_path):
    from gemma_tool_use.model.checkpoints import HandoffError, check_same_architecture
    from gemma_tool_use.orchestration.runs import resolve_init_from

    path, _ = exported
    assert resolve_init_from(str(path), _cfg().model) == str(path)
    real = _cfg(["model=gemma3_270m"]).model
    with pytest.raises(HandoffError, match="not the configured 'gemma3_270m'"):
        check_same_architecture(path, real, "pipeline.resume_from")


def test_damaged_adapters_are_refused_with_the_file_named(exported, tmp_path):
    import shutil

    from gemma_tool_use.model.adapters import AdapterError, load_adapter
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    path, _ = exported
    cfg = _cfg(["model.lora.rank=4", "model.train_token_ids=[105,106]"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)

    truncated = shutil.copytree(path, tmp_path / "truncated")
    data = (truncated / "adapter.safetensors").read_bytes()
    (truncated / "adapter.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(AdapterError, match="checksum"):
        load_adapter(model, truncated)

    other = shutil.copytree(path, tmp_path / "other_format")
    doc = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps(dict(doc, format="peft")))
    with pytest.raises(AdapterError, match="not a gemma_tool_use.adapter/1"):
        load_adapter(model, other)

    wrong_rank = build_model(
        _cfg(["model.lora.rank=8", "model.train_token_ids=[105,106]"]).model, build_mesh(cfg.tpu), 0
    )
    with pytest.raises(AdapterError, match="has shape"):
        load_adapter(wrong_rank, path)
