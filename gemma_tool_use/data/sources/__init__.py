"""Every data source by name, and `load_source` (what data.sources in conf/data/*.yaml names).

    from gemma_tool_use.data.sources import load_source
    rows = load_source("seal_tools/dev", root, report)    # root: the folder holding seal_tools/ ...
    rows = load_source("hub:NousResearch/hermes-function-calling-v1:func_calling", root, report)

Local sources read pinned files under the data root (fetched when missing, always sha256-verified:
fetch.py); hub sources come from the Hugging Face hub at a pinned revision, or from local copies of
their upstream files (data.hub_files). Every source converts through common.convert_rows.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from gemma_tool_use.data.conversations import DataError, LoadReport
from gemma_tool_use.data.sources import (
    clinc150,
    fetch,
    hammer,
    hermes,
    llamafactory,
    seal_tools,
    sgd,
    snips,
    toolace,
    toolrl,
    xlam,
)
from gemma_tool_use.data.sources.common import convert_rows, load_file


@dataclass(frozen=True)
class LocalSource:
    name: str
    load: Callable[..., list[dict]]  # (source name, [paths], report, strict) -> rows
    files: tuple[str, ...]  # under the data root, all pinned in fetch.PINNED (a file or its .gz copy)

    def __call__(self, root: str | os.PathLike, report: LoadReport, strict: bool = False) -> list[dict]:
        """Rows of the files under `root`, unverified (load_source fetches and verifies first)."""
        return self.load(self.name, [fetch.local_file(root, f) for f in self.files], report, strict)


def _each_row(convert: Callable[[dict], tuple[list, list]]) -> Callable[..., list[dict]]:
    """The loader of a layout whose rows convert on their own."""
    return lambda source, paths, report, strict: load_file(source, paths[0], convert, report, strict)


_SEAL_TOOLS = "seal_tools/tool.jsonl"


def _sgd_files(split: str) -> tuple[str, ...]:
    schemas = (f"sgd/{split}/schema.json", *(f"sgd/sgd_x/v{v}/{split}_schema.json" for v in range(1, 6)))
    return (*schemas, *fetch.SGD_DIALOGUES[split])


LOCAL_SOURCES: dict[str, LocalSource] = {
    s.name: s
    for s in (
        LocalSource("seal_tools/dev", seal_tools.load_calls, ("seal_tools/dev.jsonl", _SEAL_TOOLS)),
        LocalSource(
            "seal_tools/test_in_domain", seal_tools.load_calls, ("seal_tools/test_in_domain.jsonl", _SEAL_TOOLS)
        ),
        LocalSource(
            "seal_tools/finetune_dev", _each_row(seal_tools.finetune_row), ("seal_tools/dataset_for_finetune/dev.json",)
        ),
        LocalSource(
            "seal_tools/finetune_test_in_domain",
            _each_row(seal_tools.finetune_row),
            ("seal_tools/dataset_for_finetune/test_in_domain.json",),
        ),
        LocalSource("toolrl/rlla_sft", _each_row(toolrl.row_to_conversation), ("toolrl/rlla_sft.json",)),
        LocalSource("toolrl/rlla_4k_test", _each_row(toolrl.row_to_conversation), ("toolrl/rlla_4k_test.parquet",)),
        LocalSource("hammer/apibank_l1", hammer.load_eval, ("hammer/apibank_l1.json",)),
        LocalSource("hammer/apibank_l2", hammer.load_eval, ("hammer/apibank_l2.json",)),
        LocalSource("hammer/toolalpaca", functools.partial(hammer.load_eval, flags=True), ("hammer/toolalpaca.json",)),
        LocalSource("hammer/masking_example", _each_row(hammer.masking_row), ("hammer/masking_sft_data_example.json",)),
        LocalSource(
            "llamafactory/glaive_en", _each_row(llamafactory.glaive_row), ("llamafactory/glaive_toolcall_en_demo.json",)
        ),
        LocalSource(
            "llamafactory/glaive_zh", _each_row(llamafactory.glaive_row), ("llamafactory/glaive_toolcall_zh_demo.json",)
        ),
        LocalSource(
            "llamafactory/reason_tool_use",
            _each_row(llamafactory.reason_tool_use_row),
            ("llamafactory/reason_tool_use_demo_50.jsonl",),
        ),
        # SGD's train and dev splits (its test split is not training data and is not pinned).
        LocalSource("sgd/train", sgd.load_split, _sgd_files("train")),
        LocalSource("sgd/dev", sgd.load_split, _sgd_files("dev")),
        # SNIPS's 7 intents (its validate_* files are its benchmark's and stay out); CLINC150's train
        # and val parts (load never reads its test split).
        LocalSource("snips/train", snips.load, tuple(f for f in fetch.PINNED if f.startswith("snips/train_"))),
        LocalSource("clinc150/train_val", clinc150.load, ("clinc150/data_full.json", "clinc150/domains.json")),
    )
}


class HubLoadError(DataError):
    """A dataset could not be loaded from the Hugging Face hub (unreachable, gated, bad revision)."""


@dataclass(frozen=True)
class HubSource:
    hub_id: str
    revision: str  # pinned commit of the dataset repository
    license: str
    converter: Callable[[dict], tuple[list[dict], list[dict]]]  # one upstream row -> (tools, messages)
    files: dict[str | None, str] = field(default_factory=dict)  # config (None: the default) -> upstream file
    gated: bool = False


XLAM_ID = "Salesforce/xlam-function-calling-60k"
XLAM_IRRELEVANCE_ID = "MadeAgents/xlam-irrelevance-7.5k"
TOOLACE_ID = "Team-ACE/ToolACE"
HERMES_ID = "NousResearch/hermes-function-calling-v1"
# Revisions: commit shas of the dataset repos as pinned by other public projects and, for
# MadeAgents/xlam-irrelevance-7.5k, shown as main's head on the hub; not checked against the hub
# from here (no access). `huggingface_hub.HfApi().dataset_info(id).sha` gives the current head.
HUB_SOURCES: dict[str, HubSource] = {
    s.hub_id: s
    for s in (
        HubSource(
            XLAM_ID,
            "26d14ebfe18b1f7b524bd39b404b50af5dc97866",
            "CC-BY-4.0",
            xlam.xlam_row_to_conversation,
            {None: "xlam_function_calling_60k.json"},
            gated=True,
        ),
        HubSource(
            XLAM_IRRELEVANCE_ID,
            "34323bf09efc7e4a394998a0fa91ff997617c369",
            "CC-BY-4.0",
            xlam.xlam_row_to_conversation,
            {None: "xlam-7.5k-irrelevancek.json"},
        ),
        HubSource(
            TOOLACE_ID,
            "6bda777c88d21e5a204703c1ee45597a8fa4f734",
            "Apache-2.0",
            toolace.toolace_row_to_conversation,
            {None: "data.json"},
        ),
        HubSource(
            HERMES_ID,
            "dae3e1d28cfbcf4b915c04ea1e072030529b4bda",
            "Apache-2.0",
            hermes.hermes_row_to_conversation,
            {
                None: "func-calling-singleturn.json",
                "func_calling_singleturn": "func-calling-singleturn.json",
                "func_calling": "func-calling.json",
                "glaive_func_calling": "glaive-function-calling-5k.json",
            },
        ),
    )
}


def _hub_rows(spec: HubSource, revision: str, split: str, config: str | None, cache_dir):
    import datasets

    try:
        return datasets.load_dataset(
            spec.hub_id,
            name=config,
            revision=revision,
            split=split,
            token=os.environ.get("HF_TOKEN") or None,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except Exception as e:  # noqa: BLE001 - every failure gets the same advice
        why = (
            "the Hugging Face hub is unreachable (offline or no network)"
            if isinstance(e, (ConnectionError, TimeoutError)) or "offline" in str(e).lower()
            else "the Hugging Face hub refused or failed the request"
        )
        gated = " It is a gated dataset: accept its terms on the hub and set HF_TOKEN." if spec.gated else ""
        raise HubLoadError(
            f"could not load {spec.hub_id}@{revision}"
            + (f" ({config})" if config else "")
            + f": {why}: {type(e).__name__}: {e}.{gated} To work offline, download "
            f"{spec.files.get(config) or spec.files.get(None)} from https://huggingface.co/datasets/{spec.hub_id} "
            f"(revision {revision}) and pass data_files=<path to the .json/.jsonl/.parquet file>."
        ) from e


def load_hub_dataset(
    hub_id: str,
    *,
    revision: str,
    split: str = "train",
    report: LoadReport | None = None,
    strict: bool = False,
    cache_dir: str | Path | None = None,
    data_files: str | Path | Sequence[str | Path] | None = None,
    config: str | None = None,
) -> list[dict]:
    """Canonical rows of one registered hub dataset, from the hub (`datasets.load_dataset` at the
    given revision, token from HF_TOKEN) or, with `data_files` (files or folders), from local
    copies of the upstream files (no network; `revision` and `split` then only label the source).
    `config` picks a Hermes function-calling config (default: func_calling_singleturn)."""
    spec = HUB_SOURCES.get(hub_id)
    if spec is None:
        raise DataError(f"unknown hub dataset {hub_id!r}; supported: {', '.join(HUB_SOURCES)}")
    if config is not None and config not in spec.files:
        raise DataError(
            f"{hub_id}: config {config!r} is not supported; supported configs: "
            f"{', '.join(c for c in spec.files if c) or 'none (the dataset has one)'}"
        )
    if data_files is None:
        where = f"{hub_id}@{revision[:12]}" + (f"/{config}" if config else "") + f"/{split}"
        return convert_rows(
            _hub_rows(spec, revision, split, config, cache_dir),
            spec.converter,
            source=hub_id,
            report=report,
            strict=strict,
            where=where,
        )
    paths = [Path(p).expanduser() for p in ([data_files] if isinstance(data_files, (str, Path)) else data_files)]
    paths = [
        q
        for p in paths
        for q in (sorted(f for f in p.iterdir() if f.suffix in (".json", ".jsonl", ".parquet")) if p.is_dir() else [p])
    ]
    if not paths:
        raise DataError(f"no data files in {data_files!r}")
    return [row for p in paths for row in load_file(hub_id, p, spec.converter, report, strict)]


def load_source(
    name: str, root: str | os.PathLike, report: LoadReport, strict: bool = False, hub_files: dict | None = None
) -> list[dict]:
    """Rows of one source: a local one by registry name (its files fetched when missing and
    verified), or "hub:<id>[:<config>]" (at the pinned revision, or from hub_files[<id>])."""
    if name.startswith("hub:"):
        hub_id, _, config = name[4:].partition(":")
        if hub_id not in HUB_SOURCES:
            raise DataError(f"data.sources: unknown hub dataset {hub_id!r} (known: {', '.join(HUB_SOURCES)})")
        return load_hub_dataset(
            hub_id,
            revision=HUB_SOURCES[hub_id].revision,
            report=report,
            strict=strict,
            config=config or None,
            data_files=(hub_files or {}).get(hub_id),
        )
    if name not in LOCAL_SOURCES:
        raise DataError(f"data.sources: unknown source {name!r} (known: {', '.join(sorted(LOCAL_SOURCES))})")
    fetch.ensure_files(root, LOCAL_SOURCES[name].files)
    return LOCAL_SOURCES[name](root, report, strict)
