"""Batched generation for evaluation, GRPO and users: greedy or sampled, with a KV cache.

* Prompts are sorted by length, left-padded to a length bucket and batched, so XLA compiles
  one prefill and one decode loop per (batch, bucket) shape, not one per prompt.
* Prefill computes the vocabulary projection at the last prompt position only (`logits_at`):
  never [B, T, 262144] logits over the whole prompt, and attends over the prompt's columns
  only; the cache is widened for the new tokens afterwards.
* Decoding runs decode_step.py inside the loop (weights laid out once per call for the matmuls,
  LoRA adapters applied unmerged, the cache updated in place), which removes the per-step
  weight re-layouts and cache copies of tunix's module path (measured:
  experiments/decode_step/README.md).
* Decoding can refill finished rows (continuous batching, `refill=True`; off by default: on
  BFCL's short rows its refill compiles and wider cache cost more than the decode steps it
  saves; measured: experiments/eval_refill_ab/README.md, experiments/decode_step/README.md):
  each length bucket is one stream of `batch_size` slots over a KV cache of bucket + 2 x
  max_new_tokens columns; a jitted `jax.lax.while_loop` decodes until a quarter of the slots
  have stopped (a stop id, default <eos>/<end_of_turn>, or max_new_tokens), their results are
  handed out at once (`on_result`), and the waiting prompts are prefilled into the free slots.
  One runaway row no longer holds a whole batch for max_new_tokens steps (on BFCL most rows
  stop far short of max_new_tokens and a few run to it; measured:
  experiments/eval_refill_ab/README.md). `refill=False` (default) is the plain static batch:
  every row waits for the slowest.
* Too-long prompts follow an explicit policy: error (default, naming the prompt), skip
  (reported in the result), or truncate_left (keep <bos> and the most recent tokens).
* Rows can be held to grammars (`grammars=`, one per prompt or None; generation/tool_grammar.py):
  each step, an ordered io_callback hands the host the tokens the rows just emitted and brings
  back the next bitmask of every row (grammar_matcher.RowMatchers), applied to the logits before
  sampling, the first token after the prompt included. Unconstrained calls compile the programs
  without the callback.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import io_callback

from gemma_tool_use.config.schema import GenerationConfig
from gemma_tool_use.generation import grammar_matcher
from gemma_tool_use.generation.decode_step import (
    decode_step,
    greedy,
    head_logits,
    prepare_weights,
)
from gemma_tool_use.model.gemma import graphdef_without_remat
from gemma_tool_use.model.tokenizer import BOS_ID, END_OF_TURN_ID, EOS_ID, PAD_ID
from gemma_tool_use.utils.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_PROMPT_BUCKETS = tuple(GenerationConfig().prompt_buckets)  # the config's default, one list


class GenerationError(UserError, ValueError):
    """A prompt cannot be generated from under the configured policy."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int = 0
    stop_ids: tuple[int, ...] = (EOS_ID, END_OF_TURN_ID)

    @classmethod
    def from_config(cls, gen_cfg, seed: int) -> SamplingParams:
        """The sampling of the `generation` group (evaluation and predict read it here)."""
        return cls(
            max_new_tokens=int(gen_cfg.max_new_tokens),
            temperature=float(gen_cfg.temperature),
            top_k=int(gen_cfg.top_k),
            top_p=float(gen_cfg.top_p),
            seed=int(seed),
            stop_ids=tuple(gen_cfg.stop_ids),
        )


@dataclass
class Generation:
    index: int  # position in the input list
    prompt_tokens: int
    token_ids: list[int]  # generated ids, without the stop id
    text: str
    stop_reason: str  # "stop" | "length" | "skipped_overlength"
    truncated_prompt: bool = False
    seconds: float = 0.0  # this row's share of the wall time (its batch's or slot's time / rows)
    stop_id: int | None = None  # the stop id that ended it (not in token_ids); None unless stop_reason == "stop"


def _sample(logits, rng, params: SamplingParams):
    logits = logits.astype(jnp.float32)
    if params.temperature <= 0:
        return greedy(logits)
    logits = logits / params.temperature
    if params.top_k and params.top_k > 0:
        kth = jax.lax.top_k(logits, params.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if params.top_p < 1.0:
        order = jnp.argsort(-logits, axis=-1)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        keep_sorted = (jnp.cumsum(probs, axis=-1) - probs) < params.top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _apply_bitmask(logits, bitmask):
    """Logits [B, V] with the tokens a grammar forbids at -inf; bitmask int32 [B, ceil(V/32)]
    from grammar_matcher (bit j of word w allows token 32*w + j)."""
    B, V = logits.shape
    bits = (bitmask[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1
    allowed = bits.reshape(B, -1)[:, :V].astype(bool)
    return jnp.where(allowed, logits, -jnp.inf)


def _init_cache(cfg, batch: int, size: int, dtype):
    shape = (batch, size, cfg.num_kv_heads, cfg.head_dim)
    return {
        f"layer_{i}": {
            "k": jnp.zeros(shape, dtype),
            "v": jnp.zeros(shape, dtype),
            "end_index": jnp.zeros((batch,), jnp.int32),
        }
        for i in range(cfg.num_layers)
    }


def _roll_cache(cache, key_valid, shift):
    """Move every row's columns `shift` to the left (the shared write column with them): the
    streams' cache stays contiguous per row, which Gemma's sliding-window mask relies on."""
    rolled = {
        name: {
            "k": jnp.roll(c["k"], -shift, axis=1),
            "v": jnp.roll(c["v"], -shift, axis=1),
            "end_index": c["end_index"] - shift,
        }
        for name, c in cache.items()
    }
    return rolled, jnp.roll(key_valid, -shift, axis=1)


class Generator:
    @classmethod
    def from_config(cls, model, tokenizer, g, **overrides) -> "Generator":
        """A Generator from the `generation` config group `g` (one place that reads its keys);
        `overrides` replace single arguments (a stage's own batch size or overlength policy)."""
        kwargs = dict(
            batch_size=int(g.batch_size),
            max_prompt_len=int(g.max_prompt_len),
            overlength=str(g.overlength),
            max_batch_tokens=int(g.max_batch_tokens),
            refill=bool(g.refill),
            prompt_buckets=tuple(int(b) for b in g.prompt_buckets),
            constrain=str(g.get("constrain", "none")),
        )
        unknown = set(overrides) - set(kwargs)
        if unknown:
            raise TypeError(f"unknown Generator overrides: {sorted(unknown)}")
        return cls(model, tokenizer, **{**kwargs, **overrides})

    def __init__(
        self,
        model,
        tokenizer,
        *,
        batch_size: int = 8,
        max_prompt_len: int = 8192,
        overlength: str = "error",
        prompt_buckets: Sequence[int] = DEFAULT_PROMPT_BUCKETS,
        max_batch_tokens: int = 32768,
        refill: bool = False,
        constrain: str = "none",
    ):
        if overlength not in ("error", "skip", "truncate_left"):
            raise GenerationError(f"overlength policy must be error, skip or truncate_left, got {overlength!r}")
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_prompt_len = int(max_prompt_len)
        self.overlength = overlength
        self.buckets = tuple(sorted(b for b in prompt_buckets if b < self.max_prompt_len)) + (self.max_prompt_len,)
        # Long prompts get smaller batches: the attention scores of a prefill grow as T^2.
        self.max_batch_tokens = int(max_batch_tokens)
        # the graph the programs trace: the model's own, without training-only recomputation
        self.graphdef = graphdef_without_remat(model)
        self._source_graphdef, self.state = nnx.split(model)
        self._model = model
        self.model_config = model.config
        self.dtype = model.embedder.input_embedding.value.dtype
        self.refill = bool(refill)
        # generation.constrain, for the callers that build grammars (tool_grammar.grammars_for)
        self.constrain = constrain
        self._programs: dict = {}
        self.compiled_shapes: set[tuple] = set()
        self._grammar_caches: dict[tuple, grammar_matcher.GrammarCache] = {}  # by stop ids
        self._rows: grammar_matcher.RowMatchers | None = None  # the matchers of the running batch

    @property
    def grammar_warnings(self) -> dict[str, int]:
        """Rows left unconstrained so far, by reason (grammar_matcher.GRAMMAR_FAILED, TOKEN_REJECTED)."""
        total: dict[str, int] = {}
        for cache in self._grammar_caches.values():
            for kind, n in cache.warnings.items():
                total[kind] = total.get(kind, 0) + n
        return total

    def _row_matchers(self, rows: int, params: SamplingParams) -> grammar_matcher.RowMatchers:
        stops = tuple(params.stop_ids)
        if stops not in self._grammar_caches:
            tok = grammar_matcher.grammar_tokenizer(self.tokenizer, stops)
            self._grammar_caches[stops] = grammar_matcher.GrammarCache(tok)
        return grammar_matcher.RowMatchers(self._grammar_caches[stops], rows, self.model_config.num_embed)

    def _masked(self, logits, rows, tokens, consume, need):
        """`logits` [n, V] of decode rows `rows` with what their grammars forbid at -inf. The host
        callback first feeds each row's matcher the token it just emitted (`consume`), then
        computes the next masks (`need`); ordered, so it runs once per step, in step order."""
        words = (logits.shape[-1] + 31) // 32
        shape = jax.ShapeDtypeStruct((rows.shape[0], words), jnp.int32)
        bitmask = io_callback(self._host_masks, shape, rows, tokens, consume, need, ordered=True)
        return _apply_bitmask(logits, bitmask)

    def _pick(self, logits, rng, params: SamplingParams, masks=None):
        """Each row's next token from its logits [n, V]; `masks` = (rows, tokens, consume, need)
        puts the rows under their grammars (_masked), None leaves them unconstrained."""
        return _sample(logits if masks is None else self._masked(logits, *masks), rng, params)

    def _first_masks(self, rows):
        """`masks` for the first token after a prompt: nothing to consume, every row to mask."""
        none = jnp.zeros(rows.shape, bool)
        return rows, jnp.zeros(rows.shape, jnp.int32), none, ~none

    def _host_masks(self, rows, tokens, consume, need):
        return self._rows.masks(rows, tokens, consume, need)

    def sync(self, model=None) -> None:
        """Sample from the model's current weights. The generator keeps the arrays it split off
        at construction; an optimizer update replaces the model's arrays, so a trainer must call
        this after every update or it keeps sampling the old policy (same graph: no recompile)."""
        model = self._model if model is None else model
        graphdef, self.state = nnx.split(model)
        if graphdef != self._source_graphdef:
            raise GenerationError("Generator.sync: the model's structure changed; build a new Generator")
        self._model = model

    # ---------------------------------------------------------------- jitted programs

    def _program(self, params: SamplingParams, constrained: bool = False):
        key = (dataclasses.replace(params, seed=0), constrained)
        if key in self._programs:
            return self._programs[key]
        graphdef, cfg, dtype = self.graphdef, self.model_config, self.dtype
        stop_ids = jnp.asarray(params.stop_ids, jnp.int32)
        max_new = int(params.max_new_tokens)

        def run(state, tokens, valid, rng):
            model = nnx.merge(graphdef, state)
            B, Tp = tokens.shape
            S = Tp + max_new
            positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
            key_valid = jnp.zeros((B, S), bool).at[:, :Tp].set(valid)
            # Prefill into a cache of the prompt's own width, then widen it for the new tokens:
            # attending over all S columns computed max_new masked-out columns per position.
            mask = jnp.tril(jnp.ones((Tp, Tp), bool))[None] & valid[:, None, :]
            logits, cache = model(
                tokens, positions, _init_cache(cfg, B, Tp, dtype), mask, logits_at=jnp.full((B, 1), Tp - 1, jnp.int32)
            )
            widen = ((0, 0), (0, max_new), (0, 0), (0, 0))
            cache = {
                name: {"k": jnp.pad(c["k"], widen), "v": jnp.pad(c["v"], widen), "end_index": c["end_index"]}
                for name, c in cache.items()
            }
            weights = prepare_weights(model)  # once per call, outside the loop (decode_step.py)
            rng, sub = jax.random.split(rng)
            rows = jnp.arange(B, dtype=jnp.int32)
            # the first token after the prompt is masked too
            token = self._pick(logits[:, -1], sub, params, self._first_masks(rows) if constrained else None)
            next_pos = positions[:, -1] + 1
            out = jnp.full((B, max_new), PAD_ID, jnp.int32)
            done = jnp.zeros((B,), bool)

            def cond(c):
                step, _, _, _, _, done, _, _ = c
                return (step < max_new) & ~jnp.all(done)

            def body(c):
                model = nnx.merge(graphdef, state)  # a module of this trace level (nnx)
                step, cache, key_valid, token, next_pos, was_done, out, rng = c
                out = out.at[:, step].set(jnp.where(was_done, PAD_ID, token))
                done = was_done | jnp.isin(token, stop_ids)
                hidden, cache = decode_step(model, weights, token, next_pos, cache, key_valid, Tp + step)
                key_valid = key_valid.at[:, Tp + step].set(True)
                rng, sub = jax.random.split(rng)
                masks = (rows, token, ~was_done, ~done) if constrained else None
                token = self._pick(head_logits(model, hidden), sub, params, masks)
                return step + 1, cache, key_valid, token, next_pos + 1, done, out, rng

            carry = (jnp.int32(0), cache, key_valid, token, next_pos, done, out, rng)
            _, _, _, _, _, _, out, _ = jax.lax.while_loop(cond, body, carry)
            return out

        program = jax.jit(run)
        self._programs[key] = program
        return program

    def _stream_programs(self, params: SamplingParams, constrained: bool = False):
        """(refill, decode) for continuous batching; shapes come from the arguments, so jit
        compiles one decode per (slots, columns) and one refill per (new rows, bucket)."""
        key = ("stream", dataclasses.replace(params, seed=0), constrained)
        if key in self._programs:
            return self._programs[key]
        graphdef, cfg, dtype = self.graphdef, self.model_config, self.dtype
        stop_ids = jnp.asarray(params.stop_ids, jnp.int32)
        max_new = int(params.max_new_tokens)

        def refill(state, cache, key_valid, token, next_pos, n_gen, done, slots, tokens, valid, rng, shift):
            # Prefill the new prompts (left-padded to the bucket) in a cache of their own, then
            # place their columns just left of the shared write column in their slots.
            model = nnx.merge(graphdef, state)
            cache, key_valid = _roll_cache(cache, key_valid, shift)
            n, Tp = tokens.shape
            positions = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)
            mask = jnp.tril(jnp.ones((Tp, Tp), bool))[None] & valid[:, None, :]
            logits, fresh = model(
                tokens, positions, _init_cache(cfg, n, Tp, dtype), mask, logits_at=jnp.full((n, 1), Tp - 1, jnp.int32)
            )
            # the new rows' first tokens, under their fresh matchers
            first = self._pick(logits[:, -1], rng, params, self._first_masks(slots) if constrained else None)
            w = cache["layer_0"]["end_index"][0]
            cols = (w - Tp + jnp.arange(Tp))[None, :]
            rows = slots[:, None]
            cache = {
                name: {
                    "k": c["k"].at[rows, cols].set(fresh[name]["k"]),
                    "v": c["v"].at[rows, cols].set(fresh[name]["v"]),
                    "end_index": c["end_index"],
                }
                for name, c in cache.items()
            }
            key_valid = key_valid.at[slots].set(False).at[rows, cols].set(valid)
            return (
                cache,
                key_valid,
                token.at[slots].set(first),
                next_pos.at[slots].set(positions[:, -1] + 1),
                n_gen.at[slots].set(0),
                done.at[slots].set(False),
            )

        def decode(state, cache, key_valid, token, next_pos, n_gen, done, out, rng, min_done):
            B = token.shape[0]
            rows = jnp.arange(B, dtype=jnp.int32)
            weights = prepare_weights(nnx.merge(graphdef, state))  # once per call (decode_step.py)

            def cond(c):
                step, _, _, _, _, _, done, _, _ = c
                return (step < max_new) & (jnp.sum(done) < min_done)

            def body(c):
                model = nnx.merge(graphdef, state)  # inside the body: see _program
                step, cache, key_valid, token, next_pos, n_gen, done, out, rng = c
                active = ~done
                at = jnp.minimum(n_gen, max_new - 1)
                out = out.at[rows, at].set(jnp.where(active, token, out[rows, at]))
                n_gen = n_gen + active
                done = done | (active & (jnp.isin(token, stop_ids) | (n_gen >= max_new)))
                w = cache["layer_0"]["end_index"][0]
                hidden, cache = decode_step(model, weights, token, next_pos, cache, key_valid, w)
                key_valid = key_valid.at[:, w].set(~done)
                rng, sub = jax.random.split(rng)
                masks = (rows, token, active, ~done) if constrained else None
                token = self._pick(head_logits(model, hidden), sub, params, masks)
                return step + 1, cache, key_valid, token, next_pos + 1, n_gen, done, out, rng

            carry = (jnp.int32(0), cache, key_valid, token, next_pos, n_gen, done, out, rng)
            steps, cache, key_valid, token, next_pos, n_gen, done, out, _ = jax.lax.while_loop(cond, body, carry)
            return steps, cache, key_valid, token, next_pos, n_gen, done, out

        programs = (
            jax.jit(refill, donate_argnums=(1, 2, 3, 4, 5, 6)),
            jax.jit(decode, donate_argnums=(1, 2, 3, 4, 5, 6, 7)),
        )
        self._programs[key] = programs
        return programs

    def _stream(self, rows, Tp: int, params: SamplingParams, rng, emit, grammars=None) -> None:
        """Continuous batching over one length bucket: `rows` = [(index, ids, truncated)];
        `grammars`: None, or each prompt's grammar (or None) by its index."""
        refill, decode = self._stream_programs(params, constrained=grammars is not None)
        max_new = int(params.max_new_tokens)
        B = max(1, min(self.batch_size, self.max_batch_tokens // Tp, len(rows)))
        self._rows = None if grammars is None else self._row_matchers(B, params)
        S = Tp + 2 * max_new  # see the column budget in the comment below
        cache = _init_cache(self.model_config, B, S, self.dtype)
        cache = {name: {**c, "end_index": jnp.full((B,), Tp, jnp.int32)} for name, c in cache.items()}
        key_valid = jnp.zeros((B, S), bool)
        token, next_pos, n_gen = (jnp.zeros((B,), jnp.int32) for _ in range(3))
        done = jnp.ones((B,), bool)
        out = jnp.full((B, max_new), PAD_ID, jnp.int32)
        pending = list(rows)
        slot_row: dict[int, tuple] = {}  # slot -> (row, first real column, start time)
        free = list(range(B))
        w = Tp  # the shared write column, tracked on the host
        while pending or slot_row:
            if pending and free:
                # Column budget: after the shift every live row keeps all its columns (w stays >=
                # its span, < Tp + max_new) and the new prompts fit left of w (w >= Tp); every
                # live row then needs < max_new more columns, so all writes stay below S.
                live_span = max((w - start for (_, start, _) in slot_row.values()), default=0)
                shift = max(0, w - max(Tp, live_span))
                w -= shift
                slot_row = {s: (r, start - shift, t) for s, (r, start, t) in slot_row.items()}
                take = [pending.pop(0) for _ in range(min(len(free), len(pending)))]
                slots = [free.pop(0) for _ in take]
                n = 1 << (len(take) - 1).bit_length()  # pad to a power of two: few refill shapes
                tokens = np.full((n, Tp), PAD_ID, np.int32)
                valid = np.zeros((n, Tp), bool)
                for k in range(n):  # padding rows repeat the first (same slot, same values)
                    ids = take[k if k < len(take) else 0][1]
                    tokens[k, Tp - len(ids) :] = ids
                    valid[k, Tp - len(ids) :] = True
                slot_ids = np.array([slots[k if k < len(take) else 0] for k in range(n)], np.int32)
                if grammars is not None:
                    for s, row in zip(slots, take):
                        self._rows.assign(s, grammars[row[0]])
                rng, sub = jax.random.split(rng)
                cache, key_valid, token, next_pos, n_gen, done = refill(
                    self.state,
                    cache,
                    key_valid,
                    token,
                    next_pos,
                    n_gen,
                    done,
                    slot_ids,
                    tokens,
                    valid,
                    sub,
                    jnp.int32(shift),
                )
                self.compiled_shapes.add(("refill", n, Tp))
                now = time.perf_counter()
                for s, row in zip(slots, take):
                    slot_row[s] = (row, w - len(row[1]), now)
            live = len(slot_row)
            # wait for a quarter of the slots while prompts wait; at the end, for all of them
            min_done = (B - live) + (max(1, B // 4) if pending else live)
            rng, sub = jax.random.split(rng)
            steps, cache, key_valid, token, next_pos, n_gen, done, out = decode(
                self.state, cache, key_valid, token, next_pos, n_gen, done, out, sub, jnp.int32(min(B, min_done))
            )
            self.compiled_shapes.add(("decode", B, S, max_new))
            w += int(steps)
            done_h, n_gen_h = np.asarray(done), np.asarray(n_gen)
            finished = [s for s in slot_row if done_h[s]]
            if finished:
                out_h = np.asarray(out)
                now = time.perf_counter()
                for s in finished:
                    (i, ids, truncated), _, t0 = slot_row.pop(s)
                    free.append(s)
                    # the row's share of the wall time: its time in a slot over the slots
                    emit(self._finished(i, ids, truncated, out_h[s, : n_gen_h[s]].tolist(), params, (now - t0) / B))
                free.sort()

    # ---------------------------------------------------------------- public API

    def _finished(
        self, i: int, ids: list[int], truncated: bool, row: list[int], params: SamplingParams, seconds: float
    ) -> Generation:
        """A finished row of generated ids (its stop id, if any, and what follows it cut off)."""
        stop = next((k for k, t in enumerate(row) if t in params.stop_ids), None)
        gen = row[:stop] if stop is not None else row
        return Generation(
            i,
            len(ids),
            gen,
            self.tokenizer.decode(gen),
            "stop" if stop is not None else "length",
            truncated,
            seconds,
            row[stop] if stop is not None else None,
        )

    def _fit(self, i: int, ids: list[int]) -> tuple[list[int] | None, bool]:
        if len(ids) <= self.max_prompt_len:
            return ids, False
        if self.overlength == "error":
            raise GenerationError(
                f"prompt {i} has {len(ids)} tokens > max_prompt_len={self.max_prompt_len} "
                "(set the overlength policy to skip or truncate_left, or raise the limit)"
            )
        if self.overlength == "skip":
            return None, False
        keep = self.max_prompt_len - 1
        return [BOS_ID] + ids[-keep:], True

    def _bucket(self, n: int) -> int:
        return next(b for b in self.buckets if n <= b)

    def generate_ids(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams = SamplingParams(),
        progress=None,
        on_result=None,
        grammars: Sequence[str | None] | None = None,
    ) -> list[Generation]:
        """Generate for every prompt (token ids, starting with <bos>); results in input order.
        `progress`: optional callable(n_done) for progress bars; `on_result`: optional
        callable(Generation) called as soon as each row is finished (in finishing order), so a
        caller can write results while the rest is still generating. `grammars`: optional, one
        per prompt, a grammar (generation/tool_grammar.py) its tokens must follow, or None."""
        if grammars is not None:
            if len(grammars) != len(prompts):
                raise GenerationError(f"{len(grammars)} grammars for {len(prompts)} prompts")
            if all(g is None for g in grammars):
                grammars = None
        results: list[Generation | None] = [None] * len(prompts)
        done_count = 0

        def emit(gen: Generation) -> None:
            nonlocal done_count
            results[gen.index] = gen
            done_count += 1
            if on_result:
                on_result(gen)
            if progress:
                progress(done_count)

        todo = []
        for i, p in enumerate(prompts):
            ids, truncated = self._fit(i, [int(x) for x in p])
            if ids is None:
                emit(Generation(i, len(p), [], "", "skipped_overlength"))
            else:
                todo.append((i, ids, truncated))
        todo.sort(key=lambda t: len(t[1]))
        rng = jax.random.key(params.seed)
        if self.refill:
            for Tp in sorted({self._bucket(len(t[1])) for t in todo}):
                rng, sub = jax.random.split(rng)
                self._stream([t for t in todo if self._bucket(len(t[1])) == Tp], Tp, params, sub, emit, grammars)
            return results  # type: ignore[return-value]
        program = self._program(params, constrained=grammars is not None)
        start = 0
        while start < len(todo):
            Tp = self._bucket(len(todo[start][1]))
            B = max(1, min(self.batch_size, self.max_batch_tokens // Tp))
            chunk = [t for t in todo[start : start + B] if self._bucket(len(t[1])) == Tp]
            start += len(chunk)
            tokens = np.full((B, Tp), PAD_ID, np.int32)
            valid = np.zeros((B, Tp), bool)
            for r in range(B):  # pad the batch with copies of its first row: fixed shapes
                ids = chunk[r if r < len(chunk) else 0][1]
                tokens[r, Tp - len(ids) :] = ids
                valid[r, Tp - len(ids) :] = True
            if grammars is not None:
                self._rows = self._row_matchers(B, params)
                for r, (i, _, _) in enumerate(chunk):
                    self._rows.assign(r, grammars[i])
            t0 = time.perf_counter()
            rng, sub = jax.random.split(rng)
            out = np.asarray(program(self.state, tokens, valid, sub))
            seconds = time.perf_counter() - t0
            self.compiled_shapes.add((B, Tp, params.max_new_tokens))
            for r, (i, ids, truncated) in enumerate(chunk):
                emit(self._finished(i, ids, truncated, out[r].tolist(), params, seconds / len(chunk)))
        return results  # type: ignore[return-value]
