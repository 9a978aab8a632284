"""Training data for a run: a real-source mix (data.sources) or JSONL files (data.train_files),
tokenized through the Stage 1 renderer and cached, so a second run with the same data config,
seed and tokenizer starts training without re-processing."""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from gemma_tool_use.data.batching import TokenizedSet, tokenize_conversations
from gemma_tool_use.data.conversations import load_jsonl_conversations
from gemma_tool_use.data.mix import build_mix, mix_fingerprint, no_call_share
from gemma_tool_use.format.render import (
    DEFAULT_TOOL_SYSTEM_PROMPT,
    RenderedConversation,
)
from gemma_tool_use.model.tokenizer import cache_root
from gemma_tool_use.utils.files import sha256_file

log = logging.getLogger(__name__)

LENGTH_EDGES = (128, 256, 512, 1024, 2048, 4096)
VAL_ROWS = "val_rows.jsonl"  # the validation split's canonical rows (whole held-out tools), in the run dir


def length_histogram(ts: TokenizedSet) -> dict[str, int]:
    """Rows per token-length bin: "128" counts lengths up to 128, "256" those in (128, 256], ..."""
    counts = Counter(bisect.bisect_left(LENGTH_EDGES, len(e)) for e in ts.examples)
    return {
        **{str(edge): counts[i] for i, edge in enumerate(LENGTH_EDGES)},
        f">{LENGTH_EDGES[-1]}": counts[len(LENGTH_EDGES)],
    }


def _save(path: Path, ts: TokenizedSet) -> None:
    ex = ts.examples
    np.savez(
        path,
        ids=np.concatenate([e.ids for e in ex]),
        mask=np.concatenate([e.loss_mask for e in ex]),
        lengths=np.asarray([len(e) for e in ex], np.int64),
        dropped=json.dumps(dict(ts.dropped)),
    )


def _load(path: Path) -> TokenizedSet:
    with np.load(path) as z:
        ids, mask, lengths = z["ids"], z["mask"], z["lengths"]
        dropped = json.loads(str(z["dropped"]))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    ex = [RenderedConversation(ids[a:b], mask[a:b]) for a, b in zip(offsets[:-1], offsets[1:])]
    return TokenizedSet(ex, Counter(dropped))


def _load_cache(cache: Path):
    """(train, val, card) from a mix cache whose files match the checksums in COMPLETE; raises otherwise."""
    sums = json.loads((cache / "COMPLETE").read_text())["sha256"]
    for name in ("train.npz", "data_card.json", *(["val.npz"] if "val.npz" in sums else [])):
        if name not in sums or sha256_file(cache / name) != sums[name]:
            raise ValueError(f"{name} does not match its recorded sha256")
    train = _load(cache / "train.npz")
    val = _load(cache / "val.npz") if "val.npz" in sums else None
    return train, val, json.loads((cache / "data_card.json").read_text())


def prepare_training_data(cfg, tokenizer, run_dir: Path):
    """(train TokenizedSet, val TokenizedSet or None, card dict or None); writes the data card
    (data_card.json / data_card.md) into the run dir when the data comes from a mix."""
    d = cfg.data
    prompt = d.system_prompt if d.system_prompt is not None else DEFAULT_TOOL_SYSTEM_PROMPT

    def tokenize(convs):
        return tokenize_conversations(
            convs, tokenizer, max_length=d.max_length, overlength=d.overlength, system_prompt=prompt
        )

    def tokenize_files(files):
        return tokenize([r for f in files for r in load_jsonl_conversations(f, strict=d.strict)])

    if not d.sources:
        return tokenize_files(d.train_files), tokenize_files(d.val_files) if d.val_files else None, None

    key = mix_fingerprint(d, int(cfg.seed), tokenizer.source + f"|{d.max_length}|{d.overlength}|{prompt}")
    cache = cache_root() / "mixes" / f"{d.name}-{key}"
    cached = None
    if (cache / "COMPLETE").is_file():
        try:
            cached = _load_cache(cache)
            log.info("data mix %s: loaded tokenized cache %s", d.name, cache)
        except Exception as e:  # noqa: BLE001 - any damage means: build it again, never crash on a cache
            log.warning(
                "data mix cache %s is corrupt (%s): rebuilding it",
                cache,
                (str(e).splitlines() or [type(e).__name__])[0][:200],
            )
    if cached is not None:
        train, val, card = cached
    else:
        train_rows, val_rows, mix_card = build_mix(d, int(cfg.seed))
        train = tokenize(train_rows)
        val = tokenize(val_rows) if val_rows else None
        mix_card.token_lengths["train"] = length_histogram(train)
        mix_card.dropped["tokenize_train"] = dict(train.dropped)
        # What is trained is what fits data.max_length: a short max_length changes the mix.
        trained = [train_rows[i] for i in train.kept]
        mix_card.record("train_tokenized", trained)
        mix_card.no_call_share["train_tokenized"] = no_call_share(trained)
        if val:
            mix_card.token_lengths["val"] = length_histogram(val)
            mix_card.dropped["tokenize_val"] = dict(val.dropped)
        card = {**dataclasses.asdict(mix_card), "markdown": mix_card.to_markdown()}
        tmp = cache.with_name(cache.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # what a killed build left
        tmp.mkdir(parents=True)
        _save(tmp / "train.npz", train)
        if val:
            _save(tmp / "val.npz", val)
        (tmp / "data_card.json").write_text(json.dumps(card, indent=2))
        for name, rows in (("train_rows.jsonl", train_rows), (VAL_ROWS, val_rows)):
            (tmp / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        # Written last: the checksums of what a later run may load (a damaged file is rebuilt).
        sums = {f.name: sha256_file(f) for f in tmp.iterdir() if f.suffix in (".npz", ".json")}
        (tmp / "COMPLETE").write_text(json.dumps({"key": key, "sha256": sums}))
        shutil.rmtree(cache, ignore_errors=True)
        tmp.rename(cache)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (cache / VAL_ROWS).is_file():  # the held-out-tool rows, for call-decision scoring (learning curves)
        shutil.copyfile(cache / VAL_ROWS, run_dir / VAL_ROWS)
    (run_dir / "data_card.json").write_text(json.dumps({k: v for k, v in card.items() if k != "markdown"}, indent=2))
    (run_dir / "data_card.md").write_text(card["markdown"])
    print(card["markdown"])
    return train, val, card
