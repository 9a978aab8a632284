"""`stage=predict` on JSONL input, with LoRA adapters from an SFT run."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import run_cli

TOOLS = [{"name": "get_weather", "description": "d", "parameters": {"type": "object"}}]


def heavy_imports(stderr: str) -> list[str]:
    """JAX-family modules a `PYTHONPROFILEIMPORTTIME=1` run imported (deterministic, not a timing)."""
    mods = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in mods, "import tracing worked"
    return sorted(m for m in mods if m.split(".")[0] in ("jax", "jaxlib", "flax", "tunix"))


def error_lines(r) -> list[str]:
    return [line for line in (r.stderr + r.stdout).splitlines() if line.startswith("error:")]


def read_rejects(path):
    return {r["line"]: r["reason"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """One tiny SFT run for the module (LoRA rank 2, a checkpoint at steps 1 and 2); tests that
    change it work on a copy."""
    sft_dir = tmp_path_factory.mktemp("sft")
    r = run_cli(
        "experiments=tiny_smoke",
        "train.max_steps=2",
        "train.checkpoint_every_steps=1",
        "model.lora.rank=2",
        "tracking=disabled",
        f"hydra.run.dir={sft_dir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return sft_dir


def test_predict_with_sft_lora_checkpoint_and_bad_rows(tmp_path, tokenizer, sft_run):
    sft_dir = sft_run

    rows = [
        {
            "tools": [{"name": "get_weather", "description": "d", "parameters": {"type": "object"}}],
            "messages": [{"role": "user", "content": "Weather in Oslo?"}],
        },
        {"messages": [{"role": "user", "content": "Hi"}]},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps(rows[0])
        + "\n{not json\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]})
        + "\n"
        + json.dumps(rows[1])
        + "\n"
    )
    out_dir = tmp_path / "pred"
    # model.lora.rank=4 (tiny default) differs from the run's rank 2: adopted from the run's config.
    r = run_cli(
        "stage=predict",
        "model=tiny",
        f"predict.input_file={src}",
        f"model.lora_checkpoint={sft_dir}",
        "generation.max_new_tokens=8",
        "tracking=disabled",
        f"hydra.run.dir={out_dir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr + r.stdout
    assert "2 input row(s) rejected" in log and "in.jsonl:2" in log  # malformed rows named by line, skipped
    assert sorted(read_rejects(out_dir / "predict_rejects.jsonl")) == [2, 3]
    assert "loaded LoRA adapters (rank 2)" in log
    preds = [json.loads(l) for l in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["line"] for p in preds] == [1, 4]
    assert all(set(p) >= {"raw_text", "tool_calls", "parse_errors", "prompt_tokens", "stop_reason"} for p in preds)
    assert json.loads((out_dir / "predict_summary.json").read_text())["rejected_rows"] == 2


def test_lora_checkpoint_restores_trained_adapters(tmp_path, caplog, sft_run):
    import logging
    import shutil

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.paths import conf_dir

    sft_dir = tmp_path / "sft"
    shutil.copytree(sft_run, sft_dir)  # a checkpoint gets corrupted below
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        # the run's LoRA shape (rank 2): fresh and restored adapters compare leaf by leaf
        cfg = compose("config", overrides=["model=tiny", "model.train_token_ids=[]", "model.lora.rank=2"])
    mesh = build_mesh(cfg.tpu)
    fresh = nnx.state(build_model(cfg.model, mesh, 0), nnx.LoRAParam)
    cfg.model.lora_checkpoint = str(sft_dir / "checkpoints" / "2")
    loaded = nnx.state(build_model(cfg.model, mesh, 0), nnx.LoRAParam)
    diffs = [
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(loaded))
    ]
    assert any(diffs), "restored adapters differ from a fresh LoRA init"

    # A latest checkpoint that does not read back gives way to the newest intact one, with a warning.
    cfg.model.lora_checkpoint = str(sft_dir / "checkpoints" / "1")
    step1 = nnx.state(build_model(cfg.model, mesh, 0), nnx.LoRAParam)
    (sft_dir / "checkpoints" / "2" / "model_params" / "_METADATA").write_bytes(b"")
    cfg.model.lora_checkpoint = str(sft_dir)
    with caplog.at_level(logging.WARNING):
        fallback = nnx.state(build_model(cfg.model, mesh, 0), nnx.LoRAParam)
    assert "checkpoints/2 is corrupt" in caplog.text and "trying an earlier one" in caplog.text
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(jax.tree.leaves(step1), jax.tree.leaves(fallback))
    )


def test_sft_full_initialises_from_an_sft_small_run_by_experiment_name(tmp_path):
    r = run_cli(
        "experiments=tiny_smoke",
        "train.max_steps=2",
        "model.train_token_ids=[105,106]",
        "tracking=disabled",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(
        "experiments=tiny_smoke",
        "stage=sft_full",
        "train.init_from=tiny_smoke",
        "train.max_steps=1",
        "tracking=disabled",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stderr + r.stdout
    assert "initialising from outputs/sft_small/" in log and "loaded LoRA adapters (rank 4)" in log
    r = run_cli(
        "stage=sft_full",
        "model=tiny",
        "data=tiny",
        "train.init_from=no_such_experiment",
        "tracking=disabled",
        cwd=tmp_path,
    )
    assert r.returncode == 4 and "error: train.init_from='no_such_experiment': not a path" in r.stderr


def test_predict_reports_every_bad_row_by_file_line_and_predicts_the_good_ones(tmp_path):
    """A non-UTF-8 byte, a lone surrogate escape, a schema error, a non-JSON line and an overlong
    row (generation.overlength=error, the default) each cost their own line, reported in
    predict_rejects.jsonl by FILE line; every good row is predicted and the run exits 0. Under
    generation.constrain=tools the row with tools follows its grammar, the row without is free."""
    good = {"tools": TOOLS, "messages": [{"role": "user", "content": "Weather in Oslo?"}]}
    lines = [
        json.dumps(good).encode(),  # 1 good
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # 2 latin-1 byte
        b'{"messages": [{"role": "user", "content": "x \\ud800 y"}]}',  # 3 lone surrogate
        json.dumps({"messages": []}).encode(),  # 4 schema
        b"{not json",  # 5
        b"",  # 6 blank: ignored
        json.dumps({"tools": TOOLS, "messages": [{"role": "user", "content": "word " * 400}]}).encode(),  # 7 overlong
        json.dumps({"messages": [{"role": "user", "content": "Hi"}]}).encode(),  # 8 good
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out_dir = tmp_path / "pred"
    r = run_cli(
        "stage=predict",
        "model=tiny",
        "model.train_token_ids=[]",
        f"predict.input_file={src}",
        "generation.max_new_tokens=4",
        "generation.max_prompt_len=256",
        "generation.constrain=tools",
        "tracking=disabled",
        f"hydra.run.dir={out_dir}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr + r.stdout
    preds = [json.loads(l) for l in (out_dir / "predictions.jsonl").read_text().splitlines()]
    assert [p["line"] for p in preds] == [1, 8]
    held = preds[0]["raw_text"]  # 4 tokens of an answer the grammar allows: a call's start, or text
    assert "<tool_call>".startswith(held) or held.startswith("<tool_call>\n") or "<tool" not in held
    rejects = read_rejects(out_dir / "predict_rejects.jsonl")
    assert sorted(rejects) == [2, 3, 4, 5, 7], rejects
    assert "UTF-8" in rejects[2] and "surrogate" in rejects[3] and "messages" in rejects[4]
    assert "JSON" in rejects[5] and "generation.max_prompt_len=256" in rejects[7]
    summary = json.loads((out_dir / "predict_summary.json").read_text())
    assert summary["rows"] == 2 and summary["rejected_rows"] == 5 and summary["constrain"] == "tools"
    assert "5 input row(s) rejected" in r.stderr + r.stdout  # the user is told where to look


@pytest.mark.parametrize(
    "content,reason", [(b"", "no rows"), (b"\n  \n", "no rows"), (b"{not json\n[1]\n", "no valid row")]
)
def test_predict_refuses_an_input_without_a_valid_row_before_jax(tmp_path, content, reason):
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    r = run_cli(
        "stage=predict",
        "model=tiny",
        f"predict.input_file={src}",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path / 'pred'}",
        env_extra={"PYTHONPROFILEIMPORTTIME": "1"},
    )
    heavy = heavy_imports(r.stderr)
    assert r.returncode != 0
    errors = error_lines(r)
    assert len(errors) == 1 and "predict.input_file" in errors[0] and reason in errors[0], errors
    assert "Traceback" not in r.stderr + r.stdout
    assert not heavy, heavy[:5]
    if reason == "no valid row":
        assert sorted(read_rejects(tmp_path / "pred" / "predict_rejects.jsonl")) == [1, 2]
