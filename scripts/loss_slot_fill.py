"""How many of the loss slots a training epoch projects onto the vocabulary are real targets:
collate's dealt slots (data/batching.py) against per-row slots, on the cpu recipe's sft_small mix.

    GEMMA_TOOL_USE_DATA=/work/shared/datasets .venv/bin/python scripts/loss_slot_fill.py

Packed (data.pack_length=768) and length-grouped padded batches of 8, epoch 0, seed 0.
"""

import collections
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir

from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.data.batching import collate, collate_packed, length_grouped_batches, packed_batches
from gemma_tool_use.data.prepare import prepare_training_data
from gemma_tool_use.model.loading import load_tokenizer_for
from gemma_tool_use.utils.paths import conf_dir

OVERRIDES = [
    "model=gemma3_270m",
    "data=sft_small",
    "data.max_length=768",
    "data.length_buckets=[256,512,768]",
    "data.augment.near_miss=0.35",
]

register_configs()
with initialize_config_dir(str(conf_dir()), version_base="1.3"):
    cfg = compose("config", overrides=OVERRIDES)
buckets = list(cfg.data.length_buckets)
with tempfile.TemporaryDirectory() as tmp:
    train, _, _ = prepare_training_data(cfg, load_tokenizer_for(cfg.model), Path(tmp))
ex = train.examples
lengths = [len(e) for e in ex]
layouts = {
    "packed 768": lambda per_row: [
        collate_packed([[ex[i] for i in b] for b in bins], buckets, per_row_slots=per_row)
        for bins in packed_batches(lengths, 8, 768, 0, 0)
    ],
    "padded buckets": lambda per_row: [
        collate([ex[i] for i in idx], buckets, per_row_slots=per_row)
        for idx in length_grouped_batches(lengths, 8, 0, 0, 16)
    ],
}
for name, batches_of in layouts.items():
    for per_row in (True, False):
        batches = batches_of(per_row)
        real = int(sum(b["target_weights"].sum() for b in batches))
        slots = sum(b["target_weights"].size for b in batches)
        shapes = collections.Counter((b["input_tokens"].shape[1], b["target_weights"].shape[1]) for b in batches)
        print(
            f"{name:15s} {'per-row' if per_row else 'dealt':8s} {len(batches)} batches: {real} targets in {slots} slots "
            f"({real / slots:.0%}); T x K shapes {dict(shapes)}"
        )
