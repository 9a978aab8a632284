"""host_memory.tune_malloc: glibc hands freed multi-MiB blocks back to the system, measured on
a real allocation pattern in a fresh process, and the setting stays out of the user's way."""

import json
import os
import platform
import subprocess
import sys

import pytest

from conftest import REPO

# The pattern that grows XLA's resident memory under glibc's default: free one large block (the
# dynamic mmap threshold rises to its size), then allocate many smaller large blocks (now from the
# heap) and free all but the newest, which pins the heap top so nothing can be trimmed.
PROBE = r"""
import json, sys
import os
from gemma_tool_use.utils.host_memory import tune_malloc, wants_tuning
done = tune_malloc() if wants_tuning(True) else None
import numpy as np

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

big = np.ones(16 << 20, np.uint8); del big
blocks = [np.ones(4 << 20, np.uint8) for _ in range(100)]  # 400 MiB, touched
before = rss_mib()
del blocks[:-1]
print(json.dumps({"tuned": done, "freed_mib": before - rss_mib()}))
"""

glibc_linux = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)


def probe(**env_changes):
    env = {
        k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "LD_PRELOAD", "GTU_MALLOC_TUNING")
    }
    env.update(env_changes)
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@glibc_linux
def test_freed_large_blocks_go_back_to_the_system_only_with_the_tuning():
    tuned, default = probe(), probe(GTU_MALLOC_TUNING="0")
    assert tuned["tuned"] == "mallopt(M_MMAP_THRESHOLD, 1048576)" and default["tuned"] is None
    assert tuned["freed_mib"] > 350, tuned  # 99 of the 100 blocks returned
    assert default["freed_mib"] < 100, default  # glibc's default keeps them resident


@glibc_linux
def test_the_users_own_setting_or_allocator_is_left_alone():
    assert probe(MALLOC_MMAP_THRESHOLD_="65536")["tuned"] is None
    assert probe(LD_PRELOAD="/nonexistent/libjemalloc.so.2")["tuned"] is None


def test_the_tuning_goes_to_training_stages_by_default(monkeypatch):
    from gemma_tool_use.config.schema import TRAINING_STAGES
    from gemma_tool_use.utils.host_memory import wants_tuning

    monkeypatch.delenv("GTU_MALLOC_TUNING", raising=False)
    assert all(wants_tuning(s in TRAINING_STAGES) for s in ("sft_small", "sft_full", "grpo"))
    assert not any(
        wants_tuning(s in TRAINING_STAGES) for s in ("eval", "predict", "serve", "export")
    )  # it slows generation
    monkeypatch.setenv("GTU_MALLOC_TUNING", "1")
    assert wants_tuning(False)
    monkeypatch.setenv("GTU_MALLOC_TUNING", "0")
    assert not wants_tuning(True)
