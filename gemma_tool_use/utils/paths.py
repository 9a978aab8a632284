"""Where the configs and bundled data live, for a source checkout and for an installed wheel."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # gemma_tool_use/
# Bundled data (tiny datasets, fixtures) ships inside the package in both layouts.
RESOURCES_DIR = PACKAGE_DIR / "resources"


def config_root() -> Path:
    """Folder holding `conf/` (the primary config) and `experiments/` (named experiments).

    A wheel carries them under gemma_tool_use/_configs; a source checkout (editable install)
    has them at the repository root, next to the package.
    """
    packaged = PACKAGE_DIR / "_configs"
    if (packaged / "conf" / "config.yaml").is_file():
        return packaged
    return PACKAGE_DIR.parent


def conf_dir() -> Path:
    return config_root() / "conf"


def experiments_dir() -> Path:
    return config_root() / "experiments"
