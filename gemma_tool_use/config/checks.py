"""Semantic checks of a composed config that Hydra's typing cannot express: the range of every
value, and values that must agree with each other (across sections too). Hydra has already
rejected unknown keys, wrong types and invalid enum values; `check_config` runs next and raises
ConfigValueError naming the first bad key.

Pure: no filesystem, no JAX. The files, runs and checkpoints a config names are checked later
by `gemma_tool_use.orchestration.preflight`. One function per config section, called by `check_config`
in a fixed order (the first failing check wins).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gemma_tool_use.config.schema import CONSTRAIN_MODES, GEMMA3_VOCAB, TRAINING_STAGES, Config, runs_final_evals
from gemma_tool_use.utils.errors import UserError

log = logging.getLogger(__name__)


class ConfigValueError(UserError, ValueError):
    """A composed config is well-typed but inconsistent; the message names the key."""

    exit_code = 2


def _fail(key: str, msg: str):
    raise ConfigValueError(f"{key}: {msg}")


# ---------------------------------------------------------------------- shared validators


def _positive(key: str, value: Any, *, allow_zero: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or (value < 0 if allow_zero else value <= 0):
        bound = ">= 0" if allow_zero else "> 0"
        _fail(key, f"must be {bound}{' or null' if allow_none else ''}, got {value}")


def _finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        _fail(key, f"must be a finite number, got {value}")


def _in_range(key: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    _finite(key, value)
    if (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi):
        _fail(key, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, got {value}")


def _token_ids(key: str, ids: Any, vocab: int, *, non_empty: bool) -> None:
    """`ids` are distinct token ids of a `vocab`-row embedding table (model.arch.num_embed)."""
    ids = list(ids)
    if non_empty and not ids:
        _fail(key, "must list at least one token id")
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        _fail(key, f"token ids must be in [0, model.arch.num_embed={vocab}), got {bad}")
    if len(set(ids)) != len(ids):
        _fail(key, f"lists a token id twice: {ids}")


# ---------------------------------------------------------------------- sections


def _check_schema(cfg: DictConfig) -> None:
    """Hydra's `+key=value` appends keys even to structured configs: re-check against the schema."""
    try:
        OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, enum_to_str=True))
    except OmegaConfBaseException as e:
        _fail(getattr(e, "full_key", None) or "config", str(e).splitlines()[0])


def _check_arch(arch: DictConfig) -> None:
    for key in (
        "num_layers",
        "embed_dim",
        "hidden_dim",
        "num_heads",
        "head_dim",
        "num_kv_heads",
        "sliding_window_size",
        "local_base_frequency",
        "global_base_frequency",
    ):
        _positive(f"model.arch.{key}", arch[key])
    if arch.num_heads % arch.num_kv_heads:
        _fail(
            "model.arch.num_kv_heads", f"must divide model.arch.num_heads ({arch.num_heads}), got {arch.num_kv_heads}"
        )
    if arch.num_embed < GEMMA3_VOCAB:
        # JAX clamps out-of-range gathers: a smaller table silently maps high token ids to its last row.
        _fail(
            "model.arch.num_embed",
            f"must be >= {GEMMA3_VOCAB} (the Gemma 3 tokenizer's vocabulary), got {arch.num_embed}",
        )


def _check_lora(lora: DictConfig) -> None:
    if lora.enabled and lora.rank <= 0:
        _fail("model.lora.rank", f"must be > 0 when LoRA is enabled, got {lora.rank}")
    if lora.enabled:
        _finite("model.lora.alpha", lora.alpha)
        _positive("model.lora.alpha", lora.alpha)
    _in_range("model.lora.dropout", lora.dropout, 0.0, 1.0, hi_open=True)
    if not lora.target_modules.strip():
        _fail("model.lora.target_modules", "must be a non-empty regex over module paths")
    try:
        re.compile(lora.target_modules)
    except re.error as e:
        _fail("model.lora.target_modules", f"not a valid regex ({e}): {lora.target_modules!r}")


def _check_model(model: DictConfig, optim: DictConfig) -> None:
    """model.*; `optim` only for the lr in the full-fine-tuning-in-bf16 warning."""
    _check_arch(model.arch)
    _check_lora(model.lora)
    _token_ids("model.train_token_ids", model.train_token_ids, model.arch.num_embed, non_empty=False)
    for key in ("path", "tokenizer_path", "lora_checkpoint"):
        if model[key] is not None and not str(model[key]).strip():
            _fail(f"model.{key}", "must be null or a non-empty path")
    if not model.lora.enabled and str(model.dtype) == "bfloat16":
        # bf16 keeps 8 mantissa bits: an AdamW step of ~lr on a weight of ~0.03 is a relative
        # change of lr/0.03, below 2^-8 for any lr under ~1e-4, so most updates round away.
        log.warning(
            "model.dtype=bfloat16 with full fine-tuning (model.lora.enabled=false): AdamW updates of "
            "~optim.lr=%g are below bf16's resolution for most weights and round away; use model.dtype=float32",
            optim.lr,
        )


def _check_optim(optim: DictConfig) -> None:
    if optim.name != "adamw":
        _fail("optim.name", f"only 'adamw' is supported, got {optim.name!r}")
    _finite("optim.lr", optim.lr)
    _positive("optim.lr", optim.lr)
    _finite("optim.weight_decay", optim.weight_decay)
    _positive("optim.weight_decay", optim.weight_decay, allow_zero=True)
    _in_range("optim.b1", optim.b1, 0.0, 1.0, hi_open=True)
    _in_range("optim.b2", optim.b2, 0.0, 1.0, hi_open=True)
    _positive("optim.warmup_steps", optim.warmup_steps, allow_zero=True)
    if optim.schedule not in ("cosine", "constant"):
        _fail("optim.schedule", f"must be 'cosine' or 'constant', got {optim.schedule!r}")
    _in_range("optim.min_lr_ratio", optim.min_lr_ratio, 0.0, 1.0)
    _finite("optim.grad_clip_norm", optim.grad_clip_norm)
    _positive("optim.grad_clip_norm", optim.grad_clip_norm, allow_zero=True)  # 0 = no clipping


def _check_train(train: DictConfig) -> None:
    for key in (
        "max_steps",
        "batch_size",
        "grad_accum_steps",
        "checkpoint_every_steps",
        "eval_every_steps",
        "length_group_batches",
    ):
        _positive(f"train.{key}", train[key])
    # eval_batches caps the fixed validation batches (batches[:n]): 0 would evaluate nothing and
    # a negative n silently drops batches from the end.
    _positive("train.eval_batches", train.eval_batches)
    _positive("train.stop_after_steps", train.get("stop_after_steps"), allow_none=True)
    if train.max_checkpoints_to_keep < 1:  # 0 or less: the final checkpoint (the trained adapters) is deleted
        _fail(
            "train.max_checkpoints_to_keep",
            f"must be >= 1 (0 would delete the final checkpoint), got {train.max_checkpoints_to_keep}",
        )
    if train.init_from is not None and not str(train.init_from).strip():
        _fail("train.init_from", "must be null or a run dir, checkpoint path or experiment name")
    start = int(train.get("start_step") or 0)
    if not 0 <= start < int(train.max_steps):
        _fail("train.start_step", f"must be in [0, train.max_steps={train.max_steps}), got {start}")
    if start and not train.init_from:
        _fail("train.start_step", "needs train.init_from: the adapter the lost run saved at that step")


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        _fail("seed", f"must be in [0, 2**32), got {seed}")


def _check_eval(evaluation: DictConfig) -> None:
    if not evaluation.categories:
        _fail("eval.categories", "must list at least one BFCL category")
    if len(set(evaluation.categories)) != len(evaluation.categories):
        _fail("eval.categories", f"lists a category twice: {list(evaluation.categories)}")
    _positive("eval.limit", evaluation.limit, allow_none=True)
    _positive("eval.subset_per_category", evaluation.subset_per_category, allow_none=True)


def _check_generation(generation: DictConfig, vocab: int) -> None:
    """generation.*; `vocab` (model.arch.num_embed) bounds generation.stop_ids."""
    _positive("generation.max_new_tokens", generation.max_new_tokens)
    _finite("generation.temperature", generation.temperature)
    _positive("generation.temperature", generation.temperature, allow_zero=True)  # 0 = greedy
    _in_range("generation.top_p", generation.top_p, 0.0, 1.0, lo_open=True)
    _positive("generation.top_k", generation.top_k, allow_zero=True)  # 0 = off
    _positive("generation.batch_size", generation.batch_size)
    _positive("generation.max_prompt_len", generation.max_prompt_len)
    _positive("generation.max_batch_tokens", generation.max_batch_tokens)
    buckets = list(generation.prompt_buckets)
    if (
        not buckets
        or any(not isinstance(b, int) or isinstance(b, bool) or b <= 0 for b in buckets)
        or buckets != sorted(set(buckets))
    ):
        _fail(
            "generation.prompt_buckets", f"must be a non-empty increasing list of positive token counts, got {buckets}"
        )
    if generation.overlength not in ("error", "skip", "truncate_left"):
        _fail("generation.overlength", f"must be error, skip or truncate_left, got {generation.overlength!r}")
    _token_ids("generation.stop_ids", generation.stop_ids, vocab, non_empty=True)
    if generation.constrain not in CONSTRAIN_MODES:
        _fail("generation.constrain", f"must be one of {', '.join(CONSTRAIN_MODES)}, got {generation.constrain!r}")


def _check_data(data: DictConfig) -> None:
    _in_range("data.val_tool_fraction", data.val_tool_fraction, 0.0, 1.0, hi_open=True)
    for key, weight in data.augment.items():
        _finite(f"data.augment.{key}", weight)
        _positive(f"data.augment.{key}", weight, allow_zero=True)
    if not data.sources and not data.train_files:
        _fail("data.sources", "a data config needs sources (real datasets) or train_files (JSONL)")
    for key in ("sources", "train_files", "val_files", "tool_pools", "categories"):
        if len(set(data[key])) != len(data[key]):
            _fail(f"data.{key}", f"lists an entry twice: {list(data[key])}")
        if any(not str(entry).strip() for entry in data[key]):
            _fail(f"data.{key}", f"has an empty entry: {list(data[key])}")
    _positive("data.max_rows_per_category", data.max_rows_per_category, allow_none=True)
    for source, cap in (data.max_rows_per_source or {}).items():
        _positive(f"data.max_rows_per_source.{source}", cap)
        if source not in data.sources:
            _fail(f"data.max_rows_per_source.{source}", f"names no source of data.sources ({list(data.sources)})")
    _positive("data.max_length", data.max_length)
    if data.overlength not in ("drop", "error"):
        _fail("data.overlength", f"must be 'drop' or 'error', got {data.overlength!r}")
    buckets = list(data.length_buckets)
    if not buckets or any(b <= 0 for b in buckets):
        _fail("data.length_buckets", f"must be a non-empty list of positive lengths, got {buckets}")
    if buckets != sorted(set(buckets)) or buckets[-1] < data.max_length:
        _fail(
            "data.length_buckets",
            f"must be strictly ascending and end at >= data.max_length ({data.max_length}), got {buckets}",
        )
    if data.pack_length is not None and not data.max_length <= data.pack_length <= buckets[-1]:
        _fail(
            "data.pack_length",
            f"must be null (no packing) or between data.max_length ({data.max_length}) and the "
            f"largest of data.length_buckets ({buckets[-1]}), got {data.pack_length}",
        )


def _check_mesh(tpu: DictConfig) -> None:
    """tpu.platform and the device mesh (axis names and sizes, simulated devices)."""
    if tpu.platform not in ("cpu", "tpu", "gpu"):
        _fail("tpu.platform", f"must be cpu, tpu or gpu, got {tpu.platform!r}")
    names = list(tpu.axis_names)
    if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
        _fail("tpu.axis_names", f"must be distinct non-empty names, got {names}")
    if len(names) != len(tpu.axis_sizes):
        _fail("tpu.axis_sizes", f"has {len(tpu.axis_sizes)} sizes for {len(names)} axis names")
    if sum(1 for s in tpu.axis_sizes if s == -1) > 1:
        _fail("tpu.axis_sizes", "at most one axis may be -1")
    if any(s == 0 or s < -1 for s in tpu.axis_sizes):
        _fail("tpu.axis_sizes", f"sizes must be positive or -1, got {list(tpu.axis_sizes)}")
    _positive("tpu.simulated_devices", tpu.simulated_devices, allow_zero=True)  # 0 = the real devices
    if tpu.simulated_devices > 0 and tpu.platform != "cpu":
        _fail("tpu.simulated_devices", f"simulated devices only exist for tpu.platform=cpu (got {tpu.platform})")


def _check_hosts(tpu: DictConfig, train_batch_size: int) -> None:
    """Hosts and processes (multi-host runs); train.batch_size must split over the hosts."""
    _positive("tpu.num_hosts", tpu.num_hosts)
    _positive("tpu.chips_per_host", tpu.chips_per_host, allow_zero=True)
    _positive("tpu.num_processes", tpu.num_processes, allow_none=True)
    if tpu.process_id is not None:
        if tpu.process_id < 0 or (tpu.num_processes is not None and tpu.process_id >= tpu.num_processes):
            _fail("tpu.process_id", f"must be in [0, tpu.num_processes={tpu.num_processes}), got {tpu.process_id}")
    if tpu.coordinator_address is not None:
        host, _, port = str(tpu.coordinator_address).rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            _fail("tpu.coordinator_address", f"must be host:port, got {tpu.coordinator_address!r}")
        if tpu.num_processes is None or tpu.process_id is None:
            _fail("tpu.coordinator_address", "needs tpu.num_processes and tpu.process_id beside it")
    if train_batch_size % tpu.num_hosts:
        _fail("train.batch_size", f"must divide evenly over {tpu.num_hosts} hosts")


_LOSS_AGG_MODES = (
    "token-mean",
    "sequence-mean-token-mean",
    "sequence-mean-token-scale",
    "seq-mean-token-sum",
    "sequence-mean-token-sum-norm",
)  # tunix's aggregate_loss modes
_GRPO_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance")


def _check_grpo(grpo: DictConfig) -> None:
    """grpo.* (stage 5)."""
    for key in (
        "num_generations",
        "prompts_per_step",
        "num_iterations",
        "max_prompt_len",
        "max_new_tokens",
        "probe_size",
        "probe_every_steps",
    ):
        _positive(f"grpo.{key}", grpo[key])
    if grpo.num_generations < 2:
        _fail(
            "grpo.num_generations",
            f"must be >= 2 (a group's advantages compare its completions), got {grpo.num_generations}",
        )
    draw = grpo.get("draw_prompts_per_step")
    if draw is not None and draw < grpo.prompts_per_step:
        _fail(
            "grpo.draw_prompts_per_step",
            f"must be null or >= grpo.prompts_per_step={grpo.prompts_per_step}, got {draw}",
        )
    if draw is not None and draw > grpo.prompts_per_step and not grpo.drop_zero_variance_groups:
        _fail(
            "grpo.draw_prompts_per_step",
            "draws extra prompts to replace flat groups: needs grpo.drop_zero_variance_groups=true",
        )
    _positive("grpo.beta", grpo.beta, allow_zero=True)
    _positive("grpo.micro_batch_size", grpo.micro_batch_size, allow_zero=True)
    _positive("grpo.samples_to_log", grpo.samples_to_log, allow_zero=True)
    _in_range("grpo.epsilon", grpo.epsilon, 0, 1, lo_open=True)
    if grpo.epsilon_high is not None:
        _positive("grpo.epsilon_high", grpo.epsilon_high)
    if grpo.advantage not in ("grpo", "drgrpo", "rloo"):
        _fail("grpo.advantage", f"must be grpo, drgrpo or rloo, got {grpo.advantage!r}")
    if grpo.loss_agg_mode not in _LOSS_AGG_MODES:
        _fail("grpo.loss_agg_mode", f"must be one of tunix's aggregate_loss modes, got {grpo.loss_agg_mode!r}")
    _positive("grpo.temperature", grpo.temperature, allow_zero=True)
    _in_range("grpo.top_p", grpo.top_p, 0, 1, lo_open=True)
    _positive("grpo.top_k", grpo.top_k, allow_zero=True)
    _in_range("grpo.no_call_share", grpo.no_call_share, 0, 1)
    _in_range("grpo.several_calls_share", grpo.several_calls_share, 0, 1)
    unknown = [c for c in grpo.categories if c not in _GRPO_CATEGORIES]
    if unknown or not grpo.categories:
        wanted, got = ", ".join(_GRPO_CATEGORIES), list(grpo.categories)
        _fail("grpo.categories", f"single-turn categories ({wanted}), at least one; got {got}")


def _check_reward(reward: DictConfig) -> None:
    if reward.mode not in ("partial", "binary"):
        _fail("reward.mode", f"must be partial or binary, got {reward.mode!r}")
    for key in ("format_weight", "correctness_weight", "abstention_weight", "call_count_weight"):
        _finite(f"reward.{key}", reward[key])


def _check_process_split(tpu: DictConfig, train_batch_size: int) -> None:
    """A distributed run feeds batch_size / num_processes rows per process."""
    if tpu.distributed and tpu.num_processes and int(train_batch_size) % int(tpu.num_processes):
        _fail(
            "train.batch_size",
            f"{train_batch_size} rows do not split over tpu.num_processes={tpu.num_processes} "
            "processes (each feeds batch_size / num_processes rows)",
        )


def _heldout_file(key: str, value) -> None:
    if value and not Path(str(value)).expanduser().is_file():
        _fail(key, f"no such file: {value} (python -m gemma_tool_use.data.heldout_calls writes one)")


def _check_pipeline(pipeline: DictConfig) -> None:
    """pipeline.* (only composed for the pipeline command)."""
    bad = [stage for stage in pipeline.recipe if stage not in TRAINING_STAGES]
    if bad or not pipeline.recipe:
        stages, got = ", ".join(TRAINING_STAGES), list(pipeline.recipe)
        _fail("pipeline.recipe", f"maps training stages ({stages}) to their overrides, at least one; got {got}")
    for stage, overrides in [*pipeline.recipe.items(), ("common", pipeline.common)]:
        owned = [o for o in overrides if o.split("=")[0].lstrip("+~") in ("stage", "hydra.run.dir", "train.init_from")]
        if owned:
            _fail(
                f"pipeline.{'common' if stage == 'common' else 'recipe.' + stage}",
                f"{owned}: the pipeline sets the stage, its directory and its start",
            )
    if pipeline.stages is not None:
        order = list(pipeline.recipe)
        unknown = [s for s in pipeline.stages if s not in order]
        if unknown:
            _fail("pipeline.stages", f"a slice of the recipe's stages {order}, got {list(pipeline.stages)}")
        # []: BFCL of the start only (the baseline), or the final evals of the start (an adapter trained elsewhere)
        if not (pipeline.stages or pipeline.baseline or runs_final_evals(pipeline)):
            _fail(
                "pipeline.stages",
                "[] with pipeline.baseline=false and no final full eval runs nothing; "
                f"name stages of {order}, or set pipeline.baseline or pipeline.final_full_eval",
            )
        if len(set(pipeline.stages)) != len(pipeline.stages) or [s for s in order if s in pipeline.stages] != list(
            pipeline.stages
        ):
            _fail("pipeline.stages", f"each stage once, in the recipe's order {order}; got {list(pipeline.stages)}")
    _positive("pipeline.eval_subset_per_category", pipeline.eval_subset_per_category, allow_none=True)
    if not pipeline.eval_categories:
        _fail("pipeline.eval_categories", "must list at least one BFCL category")
    for key, null in (("final_eval_categories", "the default set"), ("final_constrained_categories", "none")):
        cats = pipeline.get(key)
        if cats is not None and not cats:
            _fail(f"pipeline.{key}", f"must list at least one BFCL category, or be null ({null})")
    _heldout_file("pipeline.heldout_prompts", pipeline.get("heldout_prompts"))


def _check_tracking(tracking: DictConfig) -> None:
    if str(tracking.mode) != "disabled" and not tracking.project.strip():
        _fail("tracking.project", "must be a non-empty W&B project name")


def _check_curve(cfg: DictConfig) -> None:
    curve = cfg.curve
    if cfg.get("pipeline") is not None:
        _fail("curve", "a learning curve is one SFT run; it cannot be combined with pipeline=...")
    if str(cfg.stage.name) not in ("sft_small", "sft_full"):
        _fail(
            "curve", f"a learning curve slices an SFT stage (stage=sft_small or sft_full), not {str(cfg.stage.name)!r}"
        )
    _positive("curve.every_steps", curve.every_steps)
    _positive("curve.until_steps", curve.until_steps, allow_none=True)
    if curve.until_steps is not None and curve.until_steps > cfg.train.max_steps:
        _fail("curve.until_steps", f"{curve.until_steps} is past train.max_steps={cfg.train.max_steps}")
    _positive("curve.subset_per_category", curve.subset_per_category)
    _positive("curve.val_prompts", curve.val_prompts, allow_zero=True)
    if curve.get("heldout_prompts") and not Path(str(curve.heldout_prompts)).expanduser().is_file():
        _fail(
            "curve.heldout_prompts",
            f"no such file: {curve.heldout_prompts} (python -m gemma_tool_use.data.heldout_calls writes one)",
        )
    _finite("curve.flat_points", curve.flat_points)
    _positive("curve.flat_points", curve.flat_points, allow_zero=True)
    if not curve.eval_categories:
        _fail("curve.eval_categories", "needs at least one BFCL category")


def check_config(cfg: DictConfig) -> None:
    """Semantic checks Hydra's typing cannot express: the range of every value, and values that
    must agree with each other. Pure: no filesystem, no JAX (paths are checked by `preflight`).
    Raises ConfigValueError naming the key of the first failing check."""
    _check_schema(cfg)
    _check_model(cfg.model, cfg.optim)
    _check_optim(cfg.optim)
    _check_train(cfg.train)
    if cfg.train.get("start_step") and cfg.stage.name not in ("sft_small", "sft_full"):
        _fail("train.start_step", f"takes up an SFT run; stage={cfg.stage.name} does not read it")
    _check_seed(cfg.seed)
    _check_eval(cfg.eval)
    _check_generation(cfg.generation, cfg.model.arch.num_embed)
    _check_data(cfg.data)
    _check_mesh(cfg.tpu)
    _check_hosts(cfg.tpu, cfg.train.batch_size)
    _check_grpo(cfg.grpo)
    _check_reward(cfg.reward)
    _check_process_split(cfg.tpu, cfg.train.batch_size)
    pipeline = cfg.get("pipeline")
    if pipeline is not None:
        _check_pipeline(pipeline)
    if cfg.get("curve") is not None:
        _check_curve(cfg)
    _check_tracking(cfg.tracking)
