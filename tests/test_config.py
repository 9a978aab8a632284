"""Every group option and experiment composes; bad configs fail fast naming the key."""

import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import REPO, run_cli
from gemma_tool_use.config import ConfigValueError, check_config, register_configs
from gemma_tool_use.paths import conf_dir, experiments_dir

register_configs()
GROUPS = ("model", "data", "stage", "tpu", "tracking")


def _compose(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def group_options():
    for group in GROUPS:
        for f in sorted((conf_dir() / group).glob("*.yaml")):
            yield group, f.stem


def experiment_names():
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def test_config_locations_are_the_repo():
    assert conf_dir() == REPO / "conf" and experiments_dir() == REPO / "experiments"


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_group_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    assert cfg[group] is not None
    if group != "tracking":
        assert cfg[group].name == option
    check_config(cfg)


def test_there_are_experiments():
    assert "tiny_smoke" in experiment_names()


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_composes(name):
    cfg = _compose([f"experiments={name}"])
    check_config(cfg)
    text = (experiments_dir() / f"{name}.yaml").read_text()
    assert "Run:" in text, "an experiment config says how to run it"
    assert "Result:" in text, "an experiment config says what result it gave"


def test_public_override_paths():
    cfg = _compose(["model.lora.rank=8", "model.lora.alpha=16", "optim.lr=3e-4", "train.max_steps=7",
                    "eval.categories=[simple_python,irrelevance]", "eval.limit=5", "seed=3"])
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.optim.lr) == (8, 16.0, 3e-4)
    assert (cfg.train.max_steps, list(cfg.eval.categories), cfg.eval.limit, cfg.seed) == (
        7, ["simple_python", "irrelevance"], 5, 3)


def test_appended_unknown_key_is_rejected():
    cfg = _compose(["+model.lora.rnk=3"])  # Hydra lets `+` through; our check does not
    with pytest.raises(ConfigValueError, match=r"model\.lora\.rnk"):
        check_config(cfg)


@pytest.mark.parametrize("override,key", [
    ("model.lora.rnk=3", "rnk"),
    ("optim.learning_rate=1", "learning_rate"),
])
def test_unknown_key_names_the_key(override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as e:
        _compose([override])
    assert key in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize("override,key", [
    ("model.lora.rank=abc", "model.lora.rank"),
    ("train.max_steps=1.5", "train.max_steps"),
    ("model.source=foo", "model.source"),
    ("tracking.mode=sometimes", "tracking.mode"),
])
def test_wrong_type_names_the_key(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        _compose([override])
    assert key in str(e.value) + str(e.value.__cause__)


def test_unknown_group_option_lists_choices():
    with pytest.raises(MissingConfigException) as e:
        _compose(["model=gemma_99b"])
    assert "gemma3_270m" in str(e.value) and "tiny" in str(e.value)


@pytest.mark.parametrize("override,key", [
    ("train.max_steps=0", "train.max_steps"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("optim.lr=-1", "optim.lr"),
    ("tpu.axis_sizes=[2]", "tpu.axis_sizes"),
    ("data.length_buckets=[64]", "data.length_buckets"),
    ("eval.limit=0", "eval.limit"),
])
def test_semantic_errors_name_the_key(override, key):
    cfg = _compose([override])
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        check_config(cfg)


def test_full_finetuning_in_bf16_warns(caplog):
    with caplog.at_level("WARNING", logger="gemma_tool_use.config"):
        check_config(_compose(["model.lora.enabled=false", "model.dtype=bfloat16"]))
    assert "model.dtype=float32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gemma_tool_use.config"):
        check_config(_compose(["model.lora.enabled=false", "model.dtype=float32"]))
        check_config(_compose(["model.dtype=bfloat16"]))  # LoRA: adapters start at zero, no issue
    assert "bf16" not in caplog.text


def test_cli_errors_are_short_and_fast(tmp_path):
    t0 = time.time()
    r = run_cli("model.lora.rnk=3", cwd=tmp_path)
    assert r.returncode != 0
    assert "Key 'rnk' not in 'LoraConfig'" in r.stderr and "full_key: model.lora.rnk" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_cli("train.max_steps=0", cwd=tmp_path)
    assert r.returncode == 2 and "train.max_steps: must be > 0" in r.stderr + r.stdout
    r = run_cli("stage=grpo", cwd=tmp_path)
    assert r.returncode == 3 and "stage 'grpo' is not built yet" in r.stderr + r.stdout
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["grpo", "sft_small"]  # named by stage
    assert time.time() - t0 < 60


def test_help_and_cfg_job_answer_in_seconds():
    t0 = time.time()
    r = run_cli("--help")
    assert r.returncode == 0 and "model: gemma3_270m, gemma3_270m_random, tiny" in r.stdout and "gemma_tool_use is powered by Hydra" in r.stdout
    r = run_cli("--cfg", "job", "experiments=tiny_smoke")
    assert r.returncode == 0 and "max_steps: 12" in r.stdout
    assert time.time() - t0 < 20, "no JAX import before the config is known"
    assert "jax" not in r.stderr.lower()
