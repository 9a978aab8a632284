"""Typed configuration schema. Hydra merges conf/*.yaml onto these dataclasses, so an unknown
key, a wrong type or an invalid enum value fails at composition time, naming the key, before
JAX or any model is imported.

Adding an option: add a field here (with a type and a default), set it in the yaml of the
group that owns it, and use it through `cfg.<group>.<field>`. The "every config composes"
test picks up new group options and experiments automatically.
"""

from __future__ import annotations

import logging
import math
import re

from gemma_tool_use.config.schema import GEMMA3_VOCAB, TRAINING_STAGES, Config
from gemma_tool_use.utils.errors import UserError

log = logging.getLogger(__name__)


class ConfigValueError(UserError, ValueError):
    """A composed config is well-typed but inconsistent; the message names the key."""

    exit_code = 2


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
