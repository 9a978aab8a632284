"""The portable adapter: what a stage hands to the next, and what a user takes away.

A trained run's trainable parameters (LoRA A/B of every adapted projection and the trained
embedding rows) in one small directory, without the optimizer, the base weights or Orbax:

    <dir>/adapter.safetensors    one tensor per trainable leaf, named by its module path
                                 (e.g. "layers.3.attn.q_einsum.lora_a"), stored in its own dtype
    <dir>/adapter_config.json    FORMAT, the model it belongs to (name, arch), its LoRA settings
                                 and trained token ids, the source run/step/commit, and the
                                 sha256 of the tensor file

`model.lora_checkpoint=<dir>` and `train.init_from=<dir>` (so `pipeline.resume_from`) accept it
like a run dir: `runs.run_model_config` reads its model section, so the architecture check and
the adapter shape work the same way. Loading checks every name and shape before writing any
value into the model: a file of another shape is refused with the first differing leaf.
Stages write `<run dir>/adapter/` after their last step; `export_adapter` does it for any model.
"""

from __future__ import annotations

import json
from pathlib import Path

from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.files import sha256_file, write_json_atomic

FORMAT = "gemma_tool_use.adapter/1"
TENSORS = "adapter.safetensors"
CONFIG = "adapter_config.json"


class AdapterError(UserError, ValueError):
    """An adapter directory that is missing, damaged or of another model shape."""


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / CONFIG).is_file()


def read_adapter_config(path: str | Path) -> dict:
    """The adapter's config (no tensors read). Plain JSON: no JAX."""
    f = Path(path).expanduser() / CONFIG
    try:
        cfg = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"{f}: unreadable adapter config ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise AdapterError(
            f"{f}: not a {FORMAT} adapter config (format {cfg.get('format') if isinstance(cfg, dict) else None!r})"
        )
    for key in ("model", "tensors_sha256"):
        if key not in cfg:
            raise AdapterError(f"{f}: missing key '{key}'")
    return cfg


def _leaf_name(path) -> str:
    parts = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        parts.append(str(k))
    return ".".join(p for p in parts if p != "value")


def trainable_leaves(model) -> dict[str, object]:
    """Module path -> host array of every trainable leaf (nnx.LoRAParam: LoRA A/B and row
    deltas). A leaf sharded over several processes is gathered (a collective: every process of
    a multi-host run must call this)."""
    import jax
    import numpy as np
    from flax import nnx

    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.LoRAParam))
    out = {}
    for p, x in flat:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        out[_leaf_name(p)] = np.asarray(x)
    return out


def export_adapter(
    model,
    out_dir: str | Path,
    model_cfg,
    *,
    step: int | None = None,
    source: str | None = None,
    commit: str | None = None,
    write: bool = True,
    trained_on: list[str] | None = None,
) -> Path:
    """Write the model's trainable parameters as a portable adapter into out_dir (atomically:
    a temporary file renamed into place, the config last). In a multi-host run every process
    calls it (the gather is collective) and only the one with write=True writes."""
    from omegaconf import OmegaConf
    from safetensors.numpy import save_file

    out = Path(out_dir)
    tensors = trainable_leaves(model)
    if not tensors:
        raise AdapterError("the model has no trainable (LoRA) parameters to export")
    if not write:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (TENSORS + ".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(out / TENSORS)
    m = OmegaConf.to_container(model_cfg, resolve=True) if not isinstance(model_cfg, dict) else dict(model_cfg)
    config = {
        "format": FORMAT,
        "model": {
            "name": m["name"],
            "arch": m.get("arch"),
            "lora": m.get("lora"),
            "train_token_ids": list(m.get("train_token_ids") or []),
        },
        "step": step,
        "source": source,
        "commit": commit,
        # the data sources of every stage that trained it (its start's too): eval labels scores by them
        "trained_on": sorted(trained_on or []),
        "num_parameters": int(sum(t.size for t in tensors.values())),
        "tensors_sha256": sha256_file(out / TENSORS),
    }
    write_json_atomic(out / CONFIG, config)
    return out


def trained_on(checkpoint: str | Path | None) -> list[str]:
    """The data sources recorded by the adapter a checkpoint setting names (an adapter dir, or a
    run dir holding adapter/); [] for the base model, an older adapter or a bare checkpoint."""
    if not checkpoint:
        return []
    p = Path(checkpoint).expanduser()
    for d in (p, p / "adapter", p.parent / "adapter"):
        try:
            return list(json.loads((d / CONFIG).read_text()).get("trained_on") or [])
        except (OSError, ValueError, AttributeError):
            continue
    return []


# Sources whose domains a BFCL category was partly built on: scores there are labelled, not clean.
OVERLAPPING_SOURCES = {
    "sgd/": (
        # every live category: 486 of live_multiple's 1,053 entries, 87 of live_irrelevance's, 16 of
        # live_simple's and 7 of live_relevance's 16 offer `<Service>_<n>_<Intent>` functions
        (
            "live_simple",
            "live_multiple",
            "live_parallel",
            "live_parallel_multiple",
            "live_irrelevance",
            "live_relevance",
        ),
        "trained on SGD's domains (BFCL's live entries offer SGD-named functions): not a clean score",
    ),
}


def score_caveats(sources: list[str]) -> dict[str, str]:
    """category -> why its score is not clean, for a model trained on `sources`."""
    out: dict[str, str] = {}
    for prefix, (categories, why) in OVERLAPPING_SOURCES.items():
        if any(s.startswith(prefix) for s in sources):
            out.update(dict.fromkeys(categories, why))
    return out


def load_adapter(model, path: str | Path) -> dict:
    """Write the adapter's tensors into a model built with its shape (its LoRA settings and
    rows); every name, shape and the file's checksum are checked first. Returns its config."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path).expanduser()
    cfg = read_adapter_config(path)
    f = path / TENSORS
    if not f.is_file():
        raise AdapterError(f"{f}: missing (the adapter's tensors)")
    if sha256_file(f) != cfg["tensors_sha256"]:
        raise AdapterError(f"{f}: checksum differs from {CONFIG} (truncated or replaced file)")
    try:
        tensors = load_file(str(f))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{f}: unreadable ({e})") from None
    state = nnx.state(model, nnx.LoRAParam)
    flat, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [_leaf_name(p) for p, _ in flat]
    missing, extra = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
    if missing or extra:
        raise AdapterError(
            f"{path}: adapter does not fit the model: missing {missing[:3]}{'...' if len(missing) > 3 else ''}"
            f", unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    leaves = []
    for name, (_, x) in zip(names, flat):
        t = tensors[name]
        if tuple(t.shape) != tuple(x.shape):
            raise AdapterError(f"{path}: '{name}' has shape {tuple(t.shape)}, the model's is {tuple(x.shape)}")
        leaves.append(jnp.asarray(t, dtype=x.dtype))
    nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
    return cfg
