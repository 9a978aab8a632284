"""The app works from a built wheel, without the source tree: configs, experiments and
bundled data travel inside the package."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "dist")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((out / "dist").glob("gemma_tool_use-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "gemma_tool_use/_configs/conf/config.yaml" in names
    assert "gemma_tool_use/_configs/experiments/tiny_smoke.yaml" in names
    assert "gemma_tool_use/resources/data/tiny/train.jsonl" in names
    assert "hydra_plugins/gemma_tool_use_searchpath/searchpath.py" in names
    assert not [n for n in names if n.startswith("gemma_tool_use/_configs/experiments/") and n.count("/") > 3], (
        "run artifacts under experiments/<name>/ stay out of the wheel"
    )
    site = out / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return site


def _run_from_wheel(site, cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    env["PYTHONPATH"] = str(site)  # ahead of the editable install's path entry
    return subprocess.run(
        [sys.executable, "-m", "gemma_tool_use", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_installed_wheel_composes_from_its_own_configs(wheel_site, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(wheel_site)}
    where = subprocess.run(
        [sys.executable, "-c", "import gemma_tool_use.utils.paths as p; print(p.__file__); print(p.conf_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert where[0].startswith(str(wheel_site)) and where[1].startswith(str(wheel_site))
    r = _run_from_wheel(wheel_site, tmp_path, "--cfg", "job", "experiments=tiny_smoke")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "max_steps: 12" in r.stdout


def test_installed_wheel_trains(wheel_site, tmp_path):
    r = _run_from_wheel(
        wheel_site,
        tmp_path,
        "experiments=tiny_smoke",
        "train.max_steps=2",
        "tracking=disabled",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["steps"] == 2
