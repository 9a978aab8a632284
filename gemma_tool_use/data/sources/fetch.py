"""Where every data file comes from, and its check: each file under the data root is pinned to a
path in an upstream repository at a fixed commit and to the sha256 of the file we expect.
`ensure_files` downloads the missing ones (GitHub raw, or $GEMMA_TOOL_USE_DATA_MIRROR in its
place: mirrors, air-gapped copies, tests) and verifies every file, local or fetched. A documented
subset of an upstream file cannot be fetched (upstream's file is larger): it must be placed."""

from __future__ import annotations

import logging
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Iterable

from gemma_tool_use.data.conversations import DataError
from gemma_tool_use.utils.files import sha256_file

log = logging.getLogger(__name__)

# Folder under the data root -> upstream GitHub repository, pinned commit (SOURCE.md there), and the
# upstream folder its files come from (all Apache-2.0).
REPOS = {
    "seal_tools": ("fairyshine/Seal-Tools", "ce753ecd60ed08dd376984035de531ab8421f1c6", "Seal-Tools_Dataset/"),
    "toolrl": ("qiancheng0/ToolRL", "8cee13ec0ca72f0461da372a93a6fd8140dbb840", "dataset/"),
    "hammer": ("MadeAgents/Hammer", "ff415d9998180b5a68bbfdda3309ec04b472fb49", "data/"),
    "llamafactory": ("hiyouga/LLaMA-Factory", "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30", "data/"),
    "toolalpaca": ("tangqiaoyu/ToolAlpaca", "189069998d64a7baf1b4a1c3c4b2e75eb9d05532", "data/"),
}
# File under the data root -> sha256 of the file we expect. Upstream notes: ToolRL warns that about
# 18 rows reuse BFCL function descriptions (decontamination drops them); the origin of LLaMA-Factory's
# reason_tool_use rows is not stated.
PINNED = {
    "seal_tools/dev.jsonl": "53da12c9fab27e47eba4767ae3625b53bb6474215c38e5033b1fe11e84efacf6",
    "seal_tools/test_in_domain.jsonl": "330020288948e711846417c2fca9a5980ef0f1adc01ad74dc38cc9ff7142811f",
    "seal_tools/tool.jsonl": "1209d67ff1e149bc2633e15d471d72af9014770fadb41c2409cc2718953750a9",
    "seal_tools/dataset_for_finetune/dev.json": "24cf1bbe0719aed1780ca43553611535cc0e1e626529011d131e860d4222cca3",
    "seal_tools/dataset_for_finetune/test_in_domain.json": "75d51adc3521c6dce1b0f19628446a5e49d30e7a36425fada7809b0f5a4e4d7a",
    "toolrl/rlla_sft.json": "ef42a7b1574f1552d6cc7bf9f060a6425458ff67bae2baf53e945dc640dc125c",
    "toolrl/rlla_4k_test.parquet": "f7f300ebe755fd04985c83e18097d5a94a08619d72809fe06128ed3f00da7554",
    "hammer/apibank_l1.json": "b6c129cd887da3e1965479bdbe56170adc0d315567c6a716a7c493de26887f19",
    "hammer/apibank_l2.json": "7476f8a5a514c64498de6ae0f457b0b342ba3571d08a556447dafad8d0be6544",
    "hammer/toolalpaca.json": "d61e5ede4dd32aa977fade4396b43c7cc39279a98409b64df13ed50815989754",
    "hammer/masking_sft_data_example.json": "af92c76d6c5e2058b05579d24fc928d433bd3a296889c82e6cb1a65434ebd21a",
    "llamafactory/glaive_toolcall_en_demo.json": "8b84773e44e71881f32490080350734cad3069dc227eafd771ccfb80732f6437",
    "llamafactory/glaive_toolcall_zh_demo.json": "d5bbc25b250ff7578ea339abe90a612511866d9beb1ea3b66d094b4f250c9c50",
    "llamafactory/reason_tool_use_demo_50.jsonl": "6e1f0d3cbb8b0a6c73362bd42c33fa45256e7c8cb8ae74608ec7f9c6774b7e4e",
    "toolalpaca/public_apis.json": "56e3218afcc6b93725c610d06a018091a38953e300e5073fb13d81ed3cd69ac8",
}
# Files named differently upstream (path inside the upstream folder); the others keep their name.
RENAMED = {
    "toolrl/rlla_sft.json": "rlla_4k_raw/rlla_sft.json",
    "toolrl/rlla_4k_test.parquet": "rlla_4k/test.parquet",
    **{f"hammer/{n}.json": f"test/original/{n}.json" for n in ("apibank_l1", "apibank_l2", "toolalpaca")},
    "hammer/masking_sft_data_example.json": "train/masking_sft_data_example.json",
}
# Files that are documented subsets of their upstream file: verified, never fetched.
SUBSETS = {"seal_tools/tool.jsonl": "the tools the Seal-Tools rows use, a subset of upstream's tool.jsonl"}


def raw_url(local: str) -> str:
    """Download URL of a pinned file at its commit: GitHub raw, or the mirror when set."""
    folder, name = local.split("/", 1)
    repo, commit, upstream = REPOS[folder]
    rel = f"{repo}/{commit}/{upstream}{RENAMED.get(local, name)}"
    mirror = os.environ.get("GEMMA_TOOL_USE_DATA_MIRROR")
    return f"{mirror.rstrip('/')}/{rel}" if mirror else f"https://raw.githubusercontent.com/{rel}"


def verify(root: str | os.PathLike, files: Iterable[str] = PINNED) -> list[str]:
    """Problems (missing file, checksum mismatch) of pinned files under `root`; empty when all match."""
    problems = []
    for local in dict.fromkeys(files):
        path = Path(root) / local
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (digest := sha256_file(path)) != PINNED[local]:
            problems.append(f"{path}: sha256 {digest} does not match the pinned {PINNED[local]}")
    return problems


def ensure_files(root: str | os.PathLike, files: Iterable[str]) -> None:
    """Fetch the missing files among `files` from their pinned upstream, then verify every one
    (DataError naming the file on any problem)."""
    for local in dict.fromkeys(files):
        dest = Path(root) / local
        if dest.is_file():
            continue
        if local in SUBSETS:
            raise DataError(
                f"{dest} is missing and cannot be fetched: it is {SUBSETS[local]}; place the "
                f"project's copy there (sha256 {PINNED[local]}) or set data.root to a folder holding it"
            )
        url = raw_url(local)
        log.info("fetching %s -> %s", url, dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:
                shutil.copyfileobj(resp, out)
        except OSError as e:
            raise DataError(
                f"{dest} is missing and could not be fetched from {url}: {e}; "
                "set data.root to a folder holding the datasets"
            ) from e
        if (digest := sha256_file(tmp)) != PINNED[local]:
            tmp.unlink()
            raise DataError(f"{url}: sha256 {digest} does not match the pinned {PINNED[local]}")
        tmp.replace(dest)
    if problems := verify(root, files):
        raise DataError("data files do not match their pinned checksums: " + "; ".join(problems))
