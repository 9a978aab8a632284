"""Where every data file comes from, and its check: each file under the data root is pinned to a
path in an upstream repository at a fixed commit and to the sha256 of the file we expect.
`ensure_files` downloads the missing ones (GitHub raw, or $GEMMA_TOOL_USE_DATA_MIRROR in its
place: mirrors, air-gapped copies, tests) and verifies every file, local or fetched. A documented
subset of an upstream file cannot be fetched (upstream's file is larger): it must be placed.

A pinned file may also sit on disk gzip-compressed as `<name>.gz` (the shared copy of SGD is): the
pin is the sha256 of the content, so a compressed copy and upstream's plain file verify alike, and
`local_file` names whichever is there."""

from __future__ import annotations

import gzip
import hashlib
import json
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
# upstream folder its files come from (Apache-2.0, but SGD CC BY-SA 4.0, SNIPS CC0, CLINC150 CC BY 3.0:
# LICENSES).
REPOS = {
    "seal_tools": ("fairyshine/Seal-Tools", "ce753ecd60ed08dd376984035de531ab8421f1c6", "Seal-Tools_Dataset/"),
    "toolrl": ("qiancheng0/ToolRL", "8cee13ec0ca72f0461da372a93a6fd8140dbb840", "dataset/"),
    "hammer": ("MadeAgents/Hammer", "ff415d9998180b5a68bbfdda3309ec04b472fb49", "data/"),
    "llamafactory": ("hiyouga/LLaMA-Factory", "ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30", "data/"),
    "toolalpaca": ("tangqiaoyu/ToolAlpaca", "189069998d64a7baf1b4a1c3c4b2e75eb9d05532", "data/"),
    "sgd": ("google-research-datasets/dstc8-schema-guided-dialogue", "e852981ae34990f4358979625854259302feaa78", ""),
    "snips": ("sonos/nlu-benchmark", "b86ac7f1577868c42158d0dec77db50956046696", "2017-06-custom-intent-engines/"),
    "clinc150": ("clinc/oos-eval", "828f8093932c8fe6ca7936c3d2e52903b1c523de", "data/"),
}
LICENSES = {
    "seal_tools": "Apache-2.0",
    "toolrl": "Apache-2.0",
    "hammer": "Apache-2.0",
    "llamafactory": "Apache-2.0",
    "toolalpaca": "Apache-2.0",
    "sgd": "CC-BY-SA-4.0 (Rastogi et al., AAAI 2020; SGD-X: Lee et al., AAAI 2022; adapted data shared alike)",
    "snips": "CC0-1.0 (Coucke et al., 2018)",
    "clinc150": "CC-BY-3.0 (Larson et al., EMNLP 2019)",
}
_SNIPS_INTENTS = (
    "AddToPlaylist",
    "BookRestaurant",
    "GetWeather",
    "PlayMusic",
    "RateBook",
    "SearchCreativeWork",
    "SearchScreeningEvent",
)
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
    "snips/train_AddToPlaylist_full.json": "fee1b4645352e70ed8a40f1f87c3b53fc3bf75f8ebc82252a22b82c107e75b01",
    "snips/train_BookRestaurant_full.json": "7677e82cd6e9a8191f0a4502568c786278c984900b4796d3628e46f1abf73ef4",
    "snips/train_GetWeather_full.json": "86f414b2ad8a993134d85d16e25e5d337beae47cef993c0af2a5f440405c60f6",
    "snips/train_PlayMusic_full.json": "901ddbe9781d1fdb8196e789c543f80df3d29ca6e237da64947905adcc0312e4",
    "snips/train_RateBook_full.json": "bb43e4b74134300d5766f6b420d0357a63402987a225f6dc92c806c9c040ce04",
    "snips/train_SearchCreativeWork_full.json": "87b3432de48c71c205aa5238b41d9e3f2d70bdfcd0bea2427544fb9e4bd5e5bb",
    "snips/train_SearchScreeningEvent_full.json": "5447e9440c02e2fb08c3ae16b9f58a4d1332b4bc77fd34691402b02aa4399765",
    "clinc150/data_full.json": "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0",
    "clinc150/domains.json": "b947b579d3b8e74b06f93b01083d8efaff2888b43a3e362533bd88a6e1211b3a",
    # SGD: 96 train and 17 dev dialogue files (upstream has 127 and 20; the others were too large for
    # the shared snapshot), both schemas, SGD-X v1-v5's schemas: the content hashes in sgd_pins.json.
    **json.loads(Path(__file__).with_name("sgd_pins.json").read_text()),
}
SGD_DIALOGUES = {
    split: tuple(sorted(f for f in PINNED if f.startswith(f"sgd/{split}/dialogues_"))) for split in ("train", "dev")
}
# Files named differently upstream (path inside the upstream folder); the others keep their name.
RENAMED = {
    "toolrl/rlla_sft.json": "rlla_4k_raw/rlla_sft.json",
    "toolrl/rlla_4k_test.parquet": "rlla_4k/test.parquet",
    **{f"hammer/{n}.json": f"test/original/{n}.json" for n in ("apibank_l1", "apibank_l2", "toolalpaca")},
    "hammer/masking_sft_data_example.json": "train/masking_sft_data_example.json",
    **{f"snips/train_{i}_full.json": f"{i}/train_{i}_full.json" for i in _SNIPS_INTENTS},
    **{
        f"sgd/sgd_x/v{v}/{s}_schema.json": f"sgd_x/data/v{v}/{s}/schema.json"
        for v in range(1, 6)
        for s in ("train", "dev")
    },
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


def local_file(root: str | os.PathLike, local: str) -> Path:
    """Where a pinned file is under `root`: itself, else its gzip-compressed copy `<name>.gz`
    (the plain path when neither exists)."""
    path = Path(root) / local
    packed = path.with_name(path.name + ".gz")
    return packed if not path.is_file() and packed.is_file() else path


def read_bytes(path: Path) -> bytes:
    """A data file's content, decompressed when it is a `.gz` copy."""
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


def content_sha256(path: Path) -> str:
    return hashlib.sha256(read_bytes(path)).hexdigest() if path.suffix == ".gz" else sha256_file(path)


def verify(root: str | os.PathLike, files: Iterable[str] = PINNED) -> list[str]:
    """Problems (missing file, checksum mismatch) of pinned files under `root`; empty when all match."""
    problems = []
    for local in dict.fromkeys(files):
        path = local_file(root, local)
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (digest := content_sha256(path)) != PINNED[local]:
            problems.append(f"{path}: sha256 {digest} does not match the pinned {PINNED[local]}")
    return problems


def ensure_files(root: str | os.PathLike, files: Iterable[str]) -> None:
    """Fetch the missing files among `files` from their pinned upstream, then verify every one
    (DataError naming the file on any problem)."""
    for local in dict.fromkeys(files):
        dest = Path(root) / local
        if local_file(root, local).is_file():
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
