"""Wheel build hook: ship the Hydra configs inside the package (gemma_tool_use/_configs/):
all of conf/, and the named experiment configs (experiments/*.yaml) but none of the run
artifacts that sit beside them (JSONL, plots, summaries). Editable installs read both from
the checkout, so nothing is copied for them."""

from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ConfigsHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "editable":
            return
        root = Path(self.root)
        for path in sorted((root / "conf").rglob("*.yaml")):
            build_data["force_include"][str(path)] = f"gemma_tool_use/_configs/conf/{path.relative_to(root / 'conf')}"
        for path in sorted((root / "experiments").glob("*.yaml")):
            build_data["force_include"][str(path)] = f"gemma_tool_use/_configs/experiments/{path.name}"
