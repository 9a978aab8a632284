import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared"
REFERENCE_TOKENIZER = SHARED / "reference" / "gemma3_tokenizer" / "tokenizer.json"


def pytest_configure(config):
    """In-process tests use JAX's persistent compilation cache as the CLI runs do (the default
    `tpu.compilation_cache_dir`), and so do the CLI processes the tests start: with no minimum
    compile time (GTU_COMPILE_CACHE_MIN_SECS=0, read by mesh.prepare_runtime), the suite's many
    processes load the tiny model's programs instead of compiling each again (measured:
    experiments/test_suite_time/README.md). Only config: no backend starts here (device-count
    flags set later by a test still apply)."""
    import jax

    from gemma_tool_use.config.schema import TpuConfig
    from gemma_tool_use.utils.mesh import COMPILE_CACHE_MIN_SECS_ENV

    os.environ.setdefault(COMPILE_CACHE_MIN_SECS_ENV, "0")
    cache_dir = os.path.expanduser(TpuConfig.compilation_cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(os.environ[COMPILE_CACHE_MIN_SECS_ENV]))


@pytest.fixture(scope="session")
def tokenizer():
    from gemma_tool_use.model.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def reference_tokenizer():
    if not REFERENCE_TOKENIZER.is_file():
        pytest.skip(f"official tokenizer.json not found at {REFERENCE_TOKENIZER}")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(REFERENCE_TOKENIZER))


def run_cli(*args, cwd=None, env_extra=None, timeout=600, python=None):
    """Run `python -m gemma_tool_use ARGS` in a fresh process (fresh JAX, W&B and Hydra state)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    env.update(env_extra or {})
    return subprocess.run(
        [python or sys.executable, "-m", "gemma_tool_use", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
