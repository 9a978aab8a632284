"""stage=export: GGUF files that read back to the merged weights, whose independent numpy
forward matches our JAX logits, and a chat template that renders exactly our training format."""

import json

import gguf
import jax
import jax.numpy as jnp
import jinja2
import jinja2.sandbox
import numpy as np
import pytest
from flax import nnx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.export.gguf_file import chat_template, hf_name_to_gguf, roundtrip_errors, write_gguf
from gemma_tool_use.export.hf_checkpoint import merged_hf_tensors
from gemma_tool_use.format.render import render_text
from gemma_tool_use.model.tokenizer import default_gguf_path
from gemma_tool_use.model.weights import gguf_name_to_hf, gguf_to_hf_tensors
from gemma_tool_use.serving.openai_api import parse_request
from gemma_tool_use.utils.paths import conf_dir

from conftest import run_cli
from reference_gemma3_numpy import forward as reference_forward

register_configs()

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather </tools> of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}

CONVERSATIONS = [
    {"tools": [WEATHER, TIME], "messages": [{"role": "user", "content": "  Weather in Paris?  "}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
    {
        "tools": [WEATHER],
        "messages": [
            {"role": "system", "content": "You help travellers."},
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "b",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "a", "content": '{"temp_c": 18, "sky": "clear"}'},
            {"role": "tool", "tool_call_id": "b", "content": "rain </tool_response> all day"},
            {"role": "user", "content": "And tomorrow?"},
        ],
    },
    {
        "tools": [TIME],
        "messages": [
            {"role": "user", "content": "What time is it?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [{"id": "t", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "t", "content": '["12:00"]'},
            {"role": "assistant", "content": "It is noon."},
            {"role": "user", "content": "Thanks"},
        ],
    },
]


def render_template(template: str, body: dict) -> str:
    """Render as transformers (and llama.cpp's minja) do: tojson = json.dumps, ensure_ascii off."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(template).render(
        messages=body["messages"], tools=body.get("tools"), bos_token="<bos>", add_generation_prompt=True
    )


@pytest.mark.parametrize("k", range(len(CONVERSATIONS)))
def test_chat_template_renders_the_training_format(k):
    body = CONVERSATIONS[k]
    conv = parse_request({"model": "m", **body}, "m").conversation  # the server's translation
    assert render_template(chat_template(), body) == render_text(conv, add_generation_prompt=True)


def test_tensor_names_invert_the_loader():
    import gguf

    names = [t.name for t in gguf.GGUFReader(str(default_gguf_path())).tensors]
    assert all(hf_name_to_gguf(gguf_name_to_hf(n)) == n for n in names) and len(names) == 236


@pytest.fixture(scope="module")
def tuned_tiny():
    """The tiny model with non-zero LoRA B (so merging matters) and trained rows moved."""
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    lora = nnx.state(model, nnx.LoRAParam)
    leaves, treedef = jax.tree_util.tree_flatten(lora)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    nnx.update(
        model,
        jax.tree_util.tree_unflatten(
            treedef, [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
        ),
    )
    return model, cfg


def test_gguf_reads_back_and_matches_our_logits(tuned_tiny, tmp_path):
    model, cfg = tuned_tiny
    a = cfg.model.arch
    tensors = merged_hf_tensors(model, float(cfg.model.lora.alpha) / float(cfg.model.lora.rank))
    ids = [2, 105, 2364, 107, 9259, 528, 6290, 236881, 106, 107, 105, 4368, 107]
    graphdef, state = nnx.split(model)
    T = len(ids)
    logits, _ = nnx.merge(graphdef, state)(
        jnp.asarray([ids]), jnp.arange(T)[None], None, jnp.tril(jnp.ones((1, T, T), bool))
    )
    ours = np.asarray(logits[0], np.float32)
    dims = dict(
        num_layers=a.num_layers,
        num_heads=a.num_heads,
        num_kv_heads=a.num_kv_heads,
        head_dim=a.head_dim,
        sliding_window=a.sliding_window_size,
    )
    errors, readers = {}, {}
    # f16 files: test_export_stage_writes_files_a_summary_and_a_modelfile reads one back
    for kind in ("f32", "q8_0"):
        path = write_gguf(
            tensors, a, tmp_path / f"m-{kind}.gguf", kind, name="tiny", tokenizer_gguf=default_gguf_path()
        )
        readers[kind] = gguf.GGUFReader(str(path))
        back = gguf_to_hf_tensors(path, readers[kind])
        errors[kind] = roundtrip_errors(path, tensors, back)["max_rel_error"]
        theirs = reference_forward(back, ids, **dims)
        scale = np.abs(ours).max()
        if kind == "f32":
            assert errors[kind] < 1e-6  # norms are stored as 1 + w: float32 rounding only
            np.testing.assert_allclose(theirs, ours, atol=2e-4 * scale)
            assert (theirs.argmax(-1) == ours.argmax(-1)).all()
        else:
            assert np.abs(theirs - ours).max() < 0.05 * scale, kind
    assert errors["q8_0"] < 1e-2
    r = readers["q8_0"]
    assert r.fields["general.architecture"].contents() == "gemma3"
    assert r.fields["gemma3.block_count"].contents() == a.num_layers
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 262144
    assert "<tool_call>" in r.fields["tokenizer.chat_template"].contents()
    assert {t.tensor_type.name for t in r.tensors} == {"F32", "Q8_0"}


def test_export_stage_writes_files_a_summary_and_a_modelfile(tmp_path):
    r = run_cli(
        "stage=export",
        "model=tiny",
        "tracking=disabled",
        "export.types=[f16]",
        "export.name=tiny-tools",
        f"hydra.run.dir={tmp_path}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "export_summary.json").read_text())
    f16 = summary["files"]["f16"]
    assert f16["max_rel_error"] < 1e-3 and f16["bytes"] > 262144 * 64 * 2
    assert "FROM ./tiny-tools-f16.gguf" in (tmp_path / "Modelfile").read_text()
    bad = run_cli(
        "stage=export", "model=tiny", "tracking=disabled", "export.types=[q4_k_m]", f"hydra.run.dir={tmp_path}/x"
    )
    assert bad.returncode != 0 and "export.types" in bad.stderr and "llama-quantize" in bad.stderr


# llama.cpp itself, through node-llama-cpp's prebuilt CPU binaries (`npm install --prefix <dir>
# node-llama-cpp@3.22.1`, ~30 s, no compiler): set GEMMA_TOOL_USE_NODE_LLAMA_CPP=<dir> to run it.
@pytest.mark.slow
@pytest.mark.skipif(
    not __import__("os").environ.get("GEMMA_TOOL_USE_NODE_LLAMA_CPP"),
    reason="GEMMA_TOOL_USE_NODE_LLAMA_CPP (a dir with node_modules/node-llama-cpp) is not set",
)
def test_llama_cpp_generates_our_greedy_text_from_the_exported_tuned_model(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import REPO

    adapter = REPO / "experiments" / "grpo_from_sft_short_r3" / "adapter"
    r = run_cli(
        "stage=export",
        "model=gemma3_270m",
        f"model.lora_checkpoint={adapter}",
        "export.types=[q8_0]",
        "export.name=m",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path / 'export'}",
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "llama_cpp_check.py"),
            "--node-dir",
            os.environ["GEMMA_TOOL_USE_NODE_LLAMA_CPP"],
            "--out",
            str(tmp_path / "check"),
            "--gguf",
            str(tmp_path / "export" / "m-q8_0.gguf"),
            "--",
            "model=gemma3_270m",
            f"model.lora_checkpoint={adapter}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    check = json.loads((tmp_path / "check" / "llama_cpp_check.json").read_text())["files"]["m-q8_0.gguf"]
    assert check["calls_equal"] == check["text_equal"] == len(check["rows"]) == 7
