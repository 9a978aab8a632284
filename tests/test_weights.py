"""Checkpoint sources: synthetic HF, Orbax (Kaggle) and GGUF files written here load to
identical logits, which match an independent numpy reference."""

import json
import re
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from gemma_tool_use.config.schema import ModelConfig
from gemma_tool_use.model.loading import build_base_model, load_tokenizer_for
from gemma_tool_use.model.weights import WeightsError, converted_gguf_dir, gguf_name_to_hf

from reference_gemma3_numpy import forward as reference_forward

ARCH = dict(
    num_layers=6,
    num_embed=384,
    embed_dim=32,
    hidden_dim=64,
    num_heads=2,
    head_dim=16,
    num_kv_heads=1,
    sliding_window_size=8,
    local_base_frequency=10_000,
    global_base_frequency=1_000_000,
)


def tiny_hf_tensors(seed=0):
    rng = np.random.default_rng(seed)
    a = ARCH
    d, f, n, k, h = a["embed_dim"], a["hidden_dim"], a["num_heads"], a["num_kv_heads"], a["head_dim"]
    w = {
        "model.embed_tokens.weight": rng.normal(0, 0.5, (a["num_embed"], d)),
        "model.norm.weight": rng.normal(0, 0.1, d),
    }
    for i in range(a["num_layers"]):
        p = f"model.layers.{i}."
        w.update(
            {
                p + "self_attn.q_proj.weight": rng.normal(0, 0.2, (n * h, d)),
                p + "self_attn.k_proj.weight": rng.normal(0, 0.2, (k * h, d)),
                p + "self_attn.v_proj.weight": rng.normal(0, 0.2, (k * h, d)),
                p + "self_attn.o_proj.weight": rng.normal(0, 0.2, (d, n * h)),
                p + "self_attn.q_norm.weight": rng.normal(0, 0.1, h),
                p + "self_attn.k_norm.weight": rng.normal(0, 0.1, h),
                p + "mlp.gate_proj.weight": rng.normal(0, 0.2, (f, d)),
                p + "mlp.up_proj.weight": rng.normal(0, 0.2, (f, d)),
                p + "mlp.down_proj.weight": rng.normal(0, 0.2, (d, f)),
                **{
                    p + f"{nm}.weight": rng.normal(0, 0.1, d)
                    for nm in (
                        "input_layernorm",
                        "post_attention_layernorm",
                        "pre_feedforward_layernorm",
                        "post_feedforward_layernorm",
                    )
                },
            }
        )
    return {k: v.astype(np.float32) for k, v in w.items()}


def write_hf(tensors, out):
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"))
    a = ARCH
    (out / "config.json").write_text(
        json.dumps(
            {
                "model_type": "gemma3_text",
                "num_hidden_layers": a["num_layers"],
                "hidden_size": a["embed_dim"],
                "intermediate_size": a["hidden_dim"],
                "num_attention_heads": a["num_heads"],
                "num_key_value_heads": a["num_kv_heads"],
                "head_dim": a["head_dim"],
                "vocab_size": a["num_embed"],
            }
        )
    )
    return out


def write_orbax(tensors, out):
    """The upstream (Kaggle) Flax layout: 'transformer/<module>' -> {param: array}."""
    import orbax.checkpoint as ocp

    a = ARCH
    d, n, k, h = a["embed_dim"], a["num_heads"], a["num_kv_heads"], a["head_dim"]
    t = tensors
    params = {
        "transformer/embedder": {"input_embedding": t["model.embed_tokens.weight"]},
        "transformer/final_norm": {"scale": t["model.norm.weight"]},
    }
    for i in range(a["num_layers"]):
        p, q = f"model.layers.{i}.", f"transformer/layer_{i}/"
        kk = t[p + "self_attn.k_proj.weight"].reshape(k, h, d).transpose(0, 2, 1)
        vv = t[p + "self_attn.v_proj.weight"].reshape(k, h, d).transpose(0, 2, 1)
        params.update(
            {
                q + "attn/q_einsum": {"w": t[p + "self_attn.q_proj.weight"].reshape(n, h, d).transpose(0, 2, 1)},
                q + "attn/kv_einsum": {"w": np.stack([kk, vv])},
                q + "attn/attn_vec_einsum": {"w": t[p + "self_attn.o_proj.weight"].T.reshape(n, h, d)},
                q + "attn/_query_norm": {"scale": t[p + "self_attn.q_norm.weight"]},
                q + "attn/_key_norm": {"scale": t[p + "self_attn.k_norm.weight"]},
                q + "mlp/gating_einsum": {"w": np.stack([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]])},
                q + "mlp/linear": {"w": t[p + "mlp.down_proj.weight"].T},
                q + "pre_attention_norm": {"scale": t[p + "input_layernorm.weight"]},
                q + "post_attention_norm": {"scale": t[p + "post_attention_layernorm.weight"]},
                q + "pre_ffw_norm": {"scale": t[p + "pre_feedforward_layernorm.weight"]},
                q + "post_ffw_norm": {"scale": t[p + "post_feedforward_layernorm.weight"]},
            }
        )
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(out / "gemma3-tiny", params)
    ckpt.wait_until_finished()
    return out


def write_gguf(tensors, path):
    """llama.cpp naming, norms stored as w + 1, F32 tensors, no tokenizer metadata."""
    import gguf

    inverse = {}
    for i in range(ARCH["num_layers"]):
        for short in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_q_norm",
            "attn_k_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ):
            inverse[gguf_name_to_hf(f"blk.{i}.{short}.weight")] = f"blk.{i}.{short}.weight"
    inverse["model.embed_tokens.weight"] = "token_embd.weight"
    inverse["model.norm.weight"] = "output_norm.weight"
    w = gguf.GGUFWriter(str(path), "gemma3")
    for hf, arr in tensors.items():
        w.add_tensor(inverse[hf], arr + 1.0 if arr.ndim == 1 else arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def model_cfg(source, path):
    return OmegaConf.merge(
        OmegaConf.structured(ModelConfig),
        {
            "name": "synthetic",
            "source": source,
            "path": str(path),
            "dtype": "float32",
            "arch": ARCH,
            "lora": {"enabled": False},
        },
    )


def logits_of(model, ids):
    x = jnp.asarray([ids], jnp.int32)
    T = len(ids)
    mask = jnp.tril(jnp.ones((1, T, T), bool))
    logits, _ = model(x, jnp.arange(T)[None], None, mask)
    return np.asarray(logits[0], np.float32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    t = tiny_hf_tensors()
    return {
        "tensors": t,
        "hf": write_hf(t, root / "hf"),
        "kaggle": write_orbax(t, root / "kaggle"),
        "gguf": write_gguf(t, root / "tiny.gguf"),
    }


def test_all_layouts_load_to_identical_logits_matching_numpy_reference(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_TOOL_USE_CACHE", str(tmp_path / "cache"))
    ids = list(np.random.default_rng(1).integers(4, ARCH["num_embed"], 21))  # > sliding window 8
    out = {src: logits_of(build_base_model(model_cfg(src, synthetic[src]), 0), ids) for src in ("hf", "kaggle", "gguf")}
    np.testing.assert_array_equal(out["hf"], out["kaggle"])
    np.testing.assert_array_equal(out["hf"], out["gguf"])
    ref = reference_forward(
        synthetic["tensors"], ids, num_layers=6, num_heads=2, num_kv_heads=1, head_dim=16, sliding_window=8
    )
    assert np.abs(out["hf"] - ref).max() < 2e-3
    assert (out["hf"].argmax(-1) == ref.argmax(-1)).all()


def test_gguf_conversion_is_cached_and_a_corrupt_cache_is_rebuilt(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMMA_TOOL_USE_CACHE", str(tmp_path / "cache"))
    first = converted_gguf_dir(synthetic["gguf"])
    st = first / "model.safetensors"
    stamp = st.stat().st_mtime_ns
    assert converted_gguf_dir(synthetic["gguf"]) == first and st.stat().st_mtime_ns == stamp  # reused
    with st.open("r+b") as f:  # flip bytes in the middle: same size, different content
        f.seek(st.stat().st_size // 2)
        f.write(b"\x00\x01\x02\x03")
    again = converted_gguf_dir(synthetic["gguf"])
    assert again == first and st.stat().st_mtime_ns != stamp
    ids = [5, 6, 7]
    fresh = logits_of(build_base_model(model_cfg("gguf", synthetic["gguf"]), 0), ids)
    np.testing.assert_array_equal(fresh, logits_of(build_base_model(model_cfg("hf", synthetic["hf"]), 0), ids))


def test_architecture_mismatch_is_named(synthetic):
    cfg = model_cfg("hf", synthetic["hf"])
    cfg.arch.num_layers = 4
    with pytest.raises(WeightsError, match="model.arch.num_layers=4 but .*num_hidden_layers=6"):
        build_base_model(cfg, 0)


@pytest.mark.parametrize(
    "source,path,msg",
    [
        ("hf", "/nonexistent/dir", "neither a local directory nor a hub id"),
        ("hf", "not a hub id", "neither a local directory nor a hub id"),
        ("gguf", "/nonexistent/model.gguf", "GGUF file not found"),
        ("kaggle", "/nonexistent", "neither a local Orbax directory nor a kagglehub handle"),
    ],
)
def test_bad_sources_raise_clear_errors(source, path, msg):
    with pytest.raises(WeightsError, match=msg):
        build_base_model(model_cfg(source, path), 0)


def test_kaggle_handle_without_kagglehub_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "kagglehub", None)  # `import kagglehub` now raises ImportError
    with pytest.raises(WeightsError, match=re.escape("pip install 'gemma_tool_use[kaggle]'")):
        build_base_model(model_cfg("kaggle", "google/gemma-3/flax/gemma3-270m"), 0)


def test_hf_dir_without_weights_is_named(tmp_path):
    with pytest.raises(WeightsError, match="no \\*.safetensors"):
        build_base_model(model_cfg("hf", tmp_path), 0)


def test_tokenizer_comes_from_the_checkpoint_when_present(synthetic, tmp_path):
    import shutil

    from gemma_tool_use.model.tokenizer import cache_root

    d = tmp_path / "hf_with_tok"
    shutil.copytree(synthetic["hf"], d)
    src = next((cache_root() / "tokenizer").rglob("tokenizer.model"), None)
    if src is None:
        pytest.skip("no cached tokenizer.model")
    shutil.copy(src, d / "tokenizer.model")
    tok = load_tokenizer_for(model_cfg("hf", d))
    assert tok.source == str(d / "tokenizer.model")


def test_export_merges_lora_and_rows_into_an_hf_checkpoint_that_loads_back(synthetic, tmp_path):
    import jax
    from flax import nnx

    from gemma_tool_use.export.hf_checkpoint import export_hf
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    mesh = build_mesh(
        OmegaConf.create({"name": "cpu", "platform": "cpu", "axis_names": ["fsdp", "tp"], "axis_sizes": [-1, 1]})
    )
    cfg = model_cfg("hf", synthetic["hf"])
    cfg.lora.enabled, cfg.lora.rank, cfg.lora.alpha = True, 4, 8.0
    cfg.train_token_ids = [5, 9]
    model = build_model(cfg, mesh, 0)
    # Trained-looking adapters: qwix initialises B to zero, which would make the test vacuous.
    state = nnx.state(model, nnx.LoRAParam)
    keys = iter(jax.random.split(jax.random.key(3), 1000))
    nnx.update(model, jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape, x.dtype), state))
    ids = list(np.random.default_rng(2).integers(4, ARCH["num_embed"], 19)) + [5, 9]
    before = logits_of(model, ids)
    out = export_hf(model, cfg, tmp_path / "merged")
    reloaded = build_base_model(model_cfg("hf", out), 0)
    np.testing.assert_allclose(logits_of(reloaded, ids), before, atol=2e-4)


def test_open_gguf_reads_what_gguf_reads(tmp_path):
    """model/gguf_reader.open_gguf parses over a plain array for speed: the same fields (strings,
    string arrays, numbers) and the same tensor bytes as gguf's own reader."""
    import gguf

    from gemma_tool_use.model.gguf_reader import open_gguf

    path = tmp_path / "small.gguf"
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_string("general.name", "small")
    writer.add_array("tokenizer.ggml.tokens", ["<pad>", "<eos>", "héllo", "▁world", ""])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25, 3.0, -0.5])
    writer.add_uint32("gemma3.block_count", 3)
    writer.add_tensor("token_embd.weight", np.arange(24, dtype=np.float32).reshape(4, 6))
    writer.add_tensor("output_norm.weight", np.linspace(-1, 1, 6).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    ours, theirs = open_gguf(path), gguf.GGUFReader(str(path))
    assert type(ours) is not gguf.GGUFReader  # the fast path is the one under test
    assert list(ours.fields) == list(theirs.fields)
    for key in theirs.fields:
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    assert [(t.name, t.tensor_type, t.shape.tolist()) for t in ours.tensors] == [
        (t.name, t.tensor_type, t.shape.tolist()) for t in theirs.tensors
    ]
    for a, b in zip(ours.tensors, theirs.tensors):
        np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
