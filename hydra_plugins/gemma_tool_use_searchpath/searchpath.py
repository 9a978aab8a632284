"""Hydra plugins that make the top-level `experiments/` folder a config group
(`experiments=<name>`) for our app only, in a source checkout and in an installed wheel.

The folder's parent is the repository root, which also holds .venv/, outputs/ and more:
a plain file:// search path there would make Hydra crawl all of it (`--help` took minutes).
`ExperimentsConfigSource` exposes that root with the single group `experiments` and only its
top-level *.yaml files (run artifacts in experiments/<name>/ stay invisible)."""

from __future__ import annotations

import os
from typing import List, Optional

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.search_path_plugin import SearchPathPlugin

GROUP = "experiments"


class ExperimentsConfigSource(FileConfigSource):
    @staticmethod
    def scheme() -> str:
        return "gtu-experiments"

    @staticmethod
    def _visible(config_path: str) -> bool:
        parts = [p for p in config_path.strip("/").split("/") if p]
        return not parts or (parts[0] == GROUP and len(parts) <= 2)

    def is_group(self, config_path: str) -> bool:
        return config_path.strip("/") in ("", GROUP) and super().is_group(config_path)

    def is_config(self, config_path: str) -> bool:
        return self._visible(config_path) and config_path.strip("/").count("/") == 1 and super().is_config(config_path)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        path = config_path.strip("/")
        if path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) and super().is_group(GROUP) else []
        if path != GROUP:
            return []
        return [
            f
            for f in super().list(config_path, results_filter)
            if not os.path.isdir(os.path.join(self.path, f)) or results_filter == ObjectType.CONFIG
        ]


class GemmaToolUseSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from gemma_tool_use.utils.paths import conf_dir, config_root

        ours = conf_dir().as_posix()
        if any(ours in (p.path or "") for p in search_path.get_path()):
            search_path.append(
                provider="gemma_tool_use", path=f"{ExperimentsConfigSource.scheme()}://{config_root().as_posix()}"
            )
