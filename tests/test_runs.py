"""Library layering (stages import library code only) and the explicit checkpoint handoff."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from gemma_tool_use.model.checkpoints import HandoffError, run_model_config
from gemma_tool_use.orchestration.runs import resolve_init_from

STAGES_DIR = Path(__file__).parents[1] / "gemma_tool_use" / "stages"


def _imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
            mods.update(f"{node.module}.{a.name}" for a in node.names)
    return mods


@pytest.mark.parametrize("stage_file", sorted(p.name for p in STAGES_DIR.glob("*.py") if p.name != "__init__.py"))
def test_no_stage_imports_another(stage_file):
    bad = sorted(
        m
        for m in _imported_modules(STAGES_DIR / stage_file)
        if m == "gemma_tool_use.stages" or m.startswith("gemma_tool_use.stages.")
    )
    assert not bad, f"stages/{stage_file} imports {bad}: move shared code into a library module"


def _make_run(
    root: Path, rel: str, experiment: str | None, arch: dict, name: str = "gemma3_270m", checkpoint: bool = True
) -> Path:
    run = root / rel
    (run / ".hydra").mkdir(parents=True)
    overrides = [f"experiments={experiment}"] if experiment else ["stage=sft_small"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"name": name, "arch": arch}}))
    if checkpoint:
        (run / "checkpoints" / "13").mkdir(parents=True)
    return run


REAL = {"num_layers": 18, "embed_dim": 640}
TINY = {"num_layers": 2, "embed_dim": 64}


def _model(arch: dict, name: str = "gemma3_270m"):
    return OmegaConf.create({"name": name, "arch": arch})


def test_experiment_name_matches_exactly_never_a_substring(tmp_path):
    roots = (tmp_path / "outputs", tmp_path / "multirun")
    run = _make_run(tmp_path, "outputs/sft_small/a", "sft_small_gemma3_270m", REAL)
    _make_run(tmp_path, "outputs/sft_small/b", "sft_small_gemma3_270m_v2", REAL)  # a longer name: not a match
    assert resolve_init_from("sft_small_gemma3_270m", _model(REAL), roots=roots) == str(run)
    with pytest.raises(HandoffError, match="no run of experiment 'sft_small'"):  # a substring resolves nothing
        resolve_init_from("sft_small", roots=roots)


def test_stage_name_does_not_pick_a_tiny_run(tmp_path):
    roots = (tmp_path / "outputs",)
    _make_run(tmp_path, "outputs/sft_small/2026-12-01_10-00-00", None, TINY, name="tiny")
    with pytest.raises(HandoffError, match="train.init_from='sft_small'"):
        resolve_init_from("sft_small", _model(REAL), roots=roots)


def test_two_runs_of_one_experiment_are_ambiguous(tmp_path):
    roots = (tmp_path / "outputs", tmp_path / "multirun")
    _make_run(tmp_path, "outputs/x/1", "exp", REAL)
    _make_run(tmp_path, "multirun/2026/0_x", "exp", REAL)
    _make_run(tmp_path, "outputs/x/3", "exp", REAL, checkpoint=False)  # unfinished runs do not count
    with pytest.raises(HandoffError, match="2 runs of experiment 'exp'"):
        resolve_init_from("exp", roots=roots)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    run = _make_run(tmp_path, "outputs/sft_small/tiny", None, TINY, name="tiny")
    for path in (run, run / "checkpoints", run / "checkpoints" / "13"):
        with pytest.raises(HandoffError, match=r"trained on model 'tiny'.*num_layers 2 != 18"):
            resolve_init_from(str(path), _model(REAL))
    assert run_model_config(run / "checkpoints" / "13")["name"] == "tiny"
    assert resolve_init_from(str(run), _model(TINY, "tiny")) == str(run)


def test_missing_path_names_the_key(tmp_path):
    with pytest.raises(HandoffError, match=r"model.lora_checkpoint='/nonexistent/run': no such file"):
        resolve_init_from("/nonexistent/run", key="model.lora_checkpoint")
