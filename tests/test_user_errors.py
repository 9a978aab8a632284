"""Every config value is range-checked and every named file checked before JAX loads; every
user-facing error is ONE line (`error: <message>` naming the key or file), never a traceback.

Fast by construction: range checks run in-process on composed configs; the path checks
(`preflight`) run in ONE subprocess that also reports whether JAX was imported (it must not be);
a handful of end-to-end CLI cases cover the one-line report, the exit codes and the errors that
can only be known after JAX starts (LoRA target regex, `tpu=gpu` on a CPU host)."""

import json
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gemma_tool_use.config.checks import ConfigValueError, check_config
from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.utils.errors import UserError, one_line
from gemma_tool_use.utils.paths import conf_dir

from conftest import run_cli

register_configs()


def _compose(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=["experiments=tiny_smoke", *overrides])


# ------------------------------------------------------------------ range checks (in-process)


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["train.max_checkpoints_to_keep=0"], "train.max_checkpoints_to_keep"),
        (["train.max_checkpoints_to_keep=-1"], "train.max_checkpoints_to_keep"),
        (["optim.warmup_steps=-5"], "optim.warmup_steps"),
        (["tpu.simulated_devices=-3"], "tpu.simulated_devices"),
        (["train.eval_batches=-1"], "train.eval_batches"),
        (["train.eval_batches=0"], "train.eval_batches"),
        (["data.max_length=0"], "data.max_length"),
        (["data.length_buckets=[0,512]"], "data.length_buckets"),
        (["data.length_buckets=[256,128,512]"], "data.length_buckets"),
        (["data.length_buckets=[256,256,512]"], "data.length_buckets"),
        (["data.pack_length=100"], "data.pack_length"),  # shorter than data.max_length: rows would not fit
        (["data.pack_length=100000"], "data.pack_length"),  # longer than the largest bucket
        (["data.max_rows_per_category=0"], "data.max_rows_per_category"),
        (["data.augment.irrelevance=-0.5"], "data.augment.irrelevance"),
        (["data.augment.procedural=inf"], "data.augment.procedural"),
        (["data.val_tool_fraction=1.0"], "data.val_tool_fraction"),
        (["data.train_files=[tiny/train.jsonl,tiny/train.jsonl]"], "data.train_files"),
        (["generation.top_k=-1"], "generation.top_k"),
        (["generation.top_p=0"], "generation.top_p"),
        (["generation.temperature=-0.1"], "generation.temperature"),
        (["generation.stop_ids=[]"], "generation.stop_ids"),
        (["generation.stop_ids=[-1]"], "generation.stop_ids"),
        (["generation.stop_ids=[1,1]"], "generation.stop_ids"),
        (["generation.batch_size=0"], "generation.batch_size"),
        (["generation.max_prompt_len=0"], "generation.max_prompt_len"),
        (["generation.max_batch_tokens=0"], "generation.max_batch_tokens"),
        (["generation.prompt_buckets=[]"], "generation.prompt_buckets"),
        (["generation.prompt_buckets=[256,128]"], "generation.prompt_buckets"),
        (["generation.prompt_buckets=[0,128]"], "generation.prompt_buckets"),
        (["optim.lr=nan"], "optim.lr"),
        (["optim.name=sgd"], "optim.name"),
        (["optim.weight_decay=-0.1"], "optim.weight_decay"),
        (["optim.b1=1.0"], "optim.b1"),
        (["optim.b2=-0.5"], "optim.b2"),
        (["optim.min_lr_ratio=1.5"], "optim.min_lr_ratio"),
        (["optim.grad_clip_norm=-1"], "optim.grad_clip_norm"),
        (["model.lora.alpha=0"], "model.lora.alpha"),
        (["model.lora.target_modules='('"], "model.lora.target_modules"),
        (["model.lora.target_modules=''"], "model.lora.target_modules"),
        (["model.arch.num_layers=0"], "model.arch.num_layers"),
        (["model.arch.num_kv_heads=3"], "model.arch.num_kv_heads"),
        (["model.arch.num_embed=1000"], "model.arch.num_embed"),
        (["model.train_token_ids=[105,105]"], "model.train_token_ids"),
        (["model.train_token_ids=[300000]"], "model.train_token_ids"),
        (["model.path=''"], "model.path"),
        (["train.init_from=''"], "train.init_from"),
        (["eval.categories=[]"], "eval.categories"),
        (["eval.categories=[simple_python,simple_python]"], "eval.categories"),
        (["tpu.axis_names=[fsdp,fsdp]"], "tpu.axis_names"),
        (["tpu.num_hosts=0"], "tpu.num_hosts"),
        (["tpu.chips_per_host=-1"], "tpu.chips_per_host"),
        (["tpu.num_processes=0"], "tpu.num_processes"),
        (["tpu.num_processes=2", "tpu.process_id=2"], "tpu.process_id"),
        (["tpu.coordinator_address=localhost"], "tpu.coordinator_address"),
        (["tpu.coordinator_address=localhost:1234"], "tpu.coordinator_address"),  # without num_processes/process_id
        (["tpu=gpu", "tpu.simulated_devices=2"], "tpu.simulated_devices"),
        (["seed=-1"], "seed"),
        (["tracking=wandb_offline", "tracking.project=''"], "tracking.project"),
    ],
)
def test_out_of_range_values_fail_naming_the_key(overrides, key):
    with pytest.raises(ConfigValueError) as e:
        check_config(_compose(overrides))
    assert str(e.value).startswith(f"{key}: "), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["train.max_checkpoints_to_keep=1"],
        ["optim.warmup_steps=0"],
        ["tpu.simulated_devices=4", "tpu.axis_sizes=[2,2]"],
        ["train.eval_batches=1"],
        ["generation.top_k=0"],
        ["optim.grad_clip_norm=0"],
        ["optim.min_lr_ratio=1"],
        ["model.lora.enabled=false", "model.lora.rank=0", "model.lora.alpha=0"],
        ["model.lora.target_modules=.*gate_proj"],
        ["tpu.coordinator_address=10.0.0.1:8476", "tpu.num_processes=2", "tpu.process_id=1"],
        ["tracking=disabled", "tracking.project=''"],
    ],
)
def test_boundary_values_pass(overrides):
    check_config(_compose(overrides))


def test_user_errors_share_one_base_class():
    from gemma_tool_use.evaluation.bfcl import BfclError
    from gemma_tool_use.model.checkpoints import HandoffError
    from gemma_tool_use.model.weights import WeightsError
    from gemma_tool_use.stages.predict import PredictInputError
    from gemma_tool_use.utils.mesh import MeshError

    for cls in (ConfigValueError, WeightsError, BfclError, HandoffError, PredictInputError, MeshError):
        assert issubclass(cls, UserError), cls
    assert ConfigValueError.exit_code == 2 and WeightsError.exit_code == 4
    assert issubclass(ConfigValueError, ValueError) and issubclass(
        WeightsError, RuntimeError
    )  # callers' except still work
    assert one_line("a\n  b\n\nc") == "a | b | c" and one_line(ValueError()) == "ValueError"


# ------------------------------------------------------------------ path checks (one subprocess)

PREFLIGHT_CASES = r"""
import json, sys
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from gemma_tool_use.config.checks import check_config
from gemma_tool_use.orchestration.preflight import preflight
from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.paths import conf_dir
register_configs()
out = {}
for name, overrides in json.loads(sys.argv[1]).items():
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["experiments=tiny_smoke", *overrides])
    try:
        check_config(cfg)
        preflight(cfg)
        out[name] = None
    except UserError as e:
        out[name] = [type(e).__name__, str(e)]
print(json.dumps({"results": out, "jax_imported": any(m.split(".")[0] in ("jax", "jaxlib", "flax", "tunix")
                                                     for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def preflight_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preflight")
    (tmp / "hf_without_weights").mkdir()
    (tmp / "hf").mkdir()
    (tmp / "hf" / "model.safetensors").write_bytes(b"")
    good_input = tmp / "in.jsonl"
    good_input.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    other = tmp / "other_run"  # an SFT run of another architecture
    (other / ".hydra").mkdir(parents=True)
    (other / "checkpoints" / "2").mkdir(parents=True)
    (other / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"model": {"name": "gemma3_270m", "arch": {"num_layers": 18, "embed_dim": 640}}})
    )
    cases = {
        "ok": [],
        "gguf_missing": ["model.source=gguf", "model.path=/nonexistent/x.gguf"],
        "gguf_relative_missing": ["model.source=gguf", "model.path=weights/x.gguf"],
        "hf_local_missing": ["model.source=hf", "model.path=./no_such_dir"],
        "hf_bad_id": ["model.source=hf", "model.path=not-a-hub-id"],
        "hf_hub_id": ["model.source=hf", "model.path=google/gemma-3-270m"],  # not fetched before JAX: passes
        "hf_no_safetensors": ["model.source=hf", f"model.path={tmp / 'hf_without_weights'}"],
        "hf_dir": ["model.source=hf", f"model.path={tmp / 'hf'}"],
        "kaggle_missing": ["model.source=kaggle", "model.path='~/no/such/orbax'"],
        "tokenizer_missing": ["model.tokenizer_path=/nonexistent/tokenizer.model"],
        "lora_checkpoint_missing": ["model.lora_checkpoint=/nonexistent/run"],
        "lora_checkpoint_other_arch": [f"model.lora_checkpoint={other}"],
        "init_from_missing_path": ["train.init_from=/nonexistent/run"],
        "init_from_unknown_experiment": ["train.init_from=no_such_experiment"],
        "init_from_other_arch": [f"train.init_from={other}"],
        "data_root_missing": ["data.root=/nonexistent"],
        "train_file_missing": ["data.train_files=[/nonexistent.jsonl]"],
        "val_file_missing": ["data.val_files=[no_such/val.jsonl]"],
        "hub_file_missing": ["+data.hub_files.someid=/nonexistent.json"],
        "eval_unknown_category": ["stage=eval", "eval.categories=[no_such_category]"],
        "eval_after_training_unknown_category": ["eval.run_after_training=true", "eval.categories=[no_such_category]"],
        "predict_no_input": ["stage=predict"],
        "predict_input_missing": ["stage=predict", "predict.input_file=/nonexistent/in.jsonl"],
        "predict_output_is_input": [
            "stage=predict",
            f"predict.input_file={good_input}",
            f"predict.output_file={good_input}",
        ],
        "predict_ok": ["stage=predict", f"predict.input_file={good_input}"],
        # a training input is not read by stage=predict: not checked there
        "predict_ignores_train_files": [
            "stage=predict",
            f"predict.input_file={good_input}",
            "data.train_files=[/nonexistent.jsonl]",
        ],
    }
    r = subprocess.run(
        [sys.executable, "-c", PREFLIGHT_CASES, json.dumps(cases)], capture_output=True, text=True, cwd=tmp, timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_preflight_never_imports_jax(preflight_results):
    assert preflight_results["jax_imported"] is False


@pytest.mark.parametrize(
    "case,error,starts",
    [
        ("gguf_missing", "ConfigValueError", "model.path: GGUF file not found: /nonexistent/x.gguf"),
        ("gguf_relative_missing", "ConfigValueError", "model.path: GGUF file not found: weights/x.gguf"),
        ("hf_local_missing", "ConfigValueError", "model.path: './no_such_dir' is neither"),
        ("hf_bad_id", "ConfigValueError", "model.path: 'not-a-hub-id' is neither"),
        ("hf_no_safetensors", "ConfigValueError", "model.path: "),
        ("kaggle_missing", "ConfigValueError", "model.path: '~/no/such/orbax' is neither"),
        ("tokenizer_missing", "ConfigValueError", "model.tokenizer_path: file not found"),
        ("lora_checkpoint_missing", "ConfigValueError", "model.lora_checkpoint: no such file or directory"),
        ("lora_checkpoint_other_arch", "HandoffError", "model.lora_checkpoint="),
        ("init_from_missing_path", "HandoffError", "train.init_from='/nonexistent/run': no such file or directory"),
        ("init_from_unknown_experiment", "HandoffError", "train.init_from='no_such_experiment': not a path"),
        ("init_from_other_arch", "HandoffError", "train.init_from="),
        ("data_root_missing", "ConfigValueError", "data.root: not an existing directory: /nonexistent"),
        ("train_file_missing", "ConfigValueError", "data.train_files: data file not found: /nonexistent.jsonl"),
        ("val_file_missing", "ConfigValueError", "data.val_files: data file not found: no_such/val.jsonl"),
        ("hub_file_missing", "ConfigValueError", "data.hub_files.someid: file not found: /nonexistent.json"),
        ("eval_unknown_category", "BfclError", "eval.categories: unknown BFCL category 'no_such_category'"),
        ("eval_after_training_unknown_category", "BfclError", "eval.categories: unknown BFCL category"),
        ("predict_no_input", "ConfigValueError", "predict.input_file: is required for stage=predict"),
        ("predict_input_missing", "ConfigValueError", "predict.input_file: file not found: /nonexistent/in.jsonl"),
        ("predict_output_is_input", "ConfigValueError", "predict.output_file: is predict.input_file"),
    ],
)
def test_preflight_names_the_key(preflight_results, case, error, starts):
    got = preflight_results["results"][case]
    assert got is not None, f"{case}: accepted"
    assert got[0] == error and got[1].startswith(starts), got
    assert "\n" not in got[1]


@pytest.mark.parametrize("case", ["ok", "hf_hub_id", "hf_dir", "predict_ok", "predict_ignores_train_files"])
def test_preflight_accepts(preflight_results, case):
    assert preflight_results["results"][case] is None


def test_other_architecture_named_in_the_handoff_error(preflight_results):
    assert (
        "trained on model 'gemma3_270m', not the configured 'tiny'"
        in preflight_results["results"]["lora_checkpoint_other_arch"][1]
    )


# ------------------------------------------------------------------ the CLI (a handful of subprocesses)


def _heavy(stderr: str) -> list[str]:
    mods = {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in mods, "import tracing worked"
    return sorted(m for m in mods if m.split(".")[0] in ("jax", "jaxlib", "flax", "tunix"))


def cli(tmp_path, *overrides, trace_imports=False, env_extra=None):
    env = dict(env_extra or {})
    if trace_imports:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    run_dir = tmp_path / "run"
    r = run_cli(
        "experiments=tiny_smoke",
        *overrides,
        "tracking=disabled",
        f"hydra.run.dir={run_dir}",
        env_extra=env,
        cwd=tmp_path,
    )
    heavy = _heavy(r.stderr) if trace_imports else None
    r.stderr = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("import time:"))
    out = r.stderr + "\n" + r.stdout
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    log = run_dir / "gemma_tool_use.log"
    log_errors = [line for line in log.read_text().splitlines() if "[ERROR]" in line] if log.is_file() else []
    return r, out, errors, log_errors, heavy


@pytest.mark.parametrize(
    "overrides,code,message",
    [
        (["train.max_checkpoints_to_keep=0"], 2, "error: train.max_checkpoints_to_keep: must be >= 1"),
        (["data.max_length=0"], 2, "error: data.max_length: must be > 0, got 0"),
        (["model.source=gguf", "model.path=/nonexistent/x.gguf"], 2, "error: model.path: GGUF file not found"),
        (["data.root=/nonexistent"], 2, "error: data.root: not an existing directory"),
        (
            ["data.train_files=[/nonexistent.jsonl]"],
            2,
            "error: data.train_files: data file not found: /nonexistent.jsonl",
        ),
        (["train.init_from=/nonexistent/run"], 4, "error: train.init_from='/nonexistent/run': no such file"),
    ],
)
def test_pre_jax_errors_are_one_line_and_never_start_jax(tmp_path, overrides, code, message):
    r, out, errors, log_errors, heavy = cli(tmp_path, *overrides, trace_imports=True)
    assert r.returncode == code, out[-3000:]
    assert len(errors) == 1 and errors[0].startswith(message), errors
    assert "Traceback" not in out
    assert len(log_errors) == 1 and message in log_errors[0], log_errors  # the run's log file holds it too
    assert not heavy, heavy[:5]


def test_verbose_env_shows_the_traceback(tmp_path):
    r, out, errors, _, _ = cli(tmp_path, "data.max_length=0", env_extra={"GTU_VERBOSE": "1"})
    assert r.returncode == 2 and "Traceback" in out and len(errors) == 1


def test_lora_target_matching_nothing_is_one_line(tmp_path):
    r, out, errors, log_errors, _ = cli(tmp_path, "model.lora.target_modules=no_such_module", "train.max_steps=1")
    assert r.returncode == 4, out[-3000:]
    assert len(errors) == 1 and errors[0].startswith(
        "error: model.lora.target_modules='no_such_module' matches no module"
    )
    assert "Traceback" not in out and len(log_errors) == 1


def test_data_error_from_the_data_package_is_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n')
    r, out, errors, _, _ = cli(
        tmp_path, f"data.train_files=[{bad}]", "data.val_files=[]", "data.strict=true", "train.max_steps=1"
    )
    assert r.returncode != 0, out[-3000:]
    assert len(errors) == 1 and "bad.jsonl:2" in errors[0], errors
    assert "Traceback" not in out


def test_gpu_platform_on_a_cpu_host_is_one_line(tmp_path):
    r, out, errors, _, _ = cli(tmp_path, "tpu=gpu", "train.max_steps=1")
    if "JAX runs on 'gpu'" in out or r.returncode == 0:
        pytest.skip("this host has a GPU")
    assert r.returncode == 4, out[-3000:]
    assert len(errors) == 1 and errors[0].startswith("error: tpu=gpu needs platform 'gpu', but JAX runs on 'cpu'"), (
        errors
    )
    assert "platforms JAX sees: cpu" in errors[0] and "Traceback" not in out
