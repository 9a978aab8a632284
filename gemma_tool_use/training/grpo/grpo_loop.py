"""The GRPO loop of stage 5: sample, score, group advantages, clipped updates, checkpoints.

Each step: a seeded set of prompts from the training mix (a share of them with no fitting tool),
G sampled completions each from the *current* policy (the generator is re-synced after every
update), rewards as plain functions (rewards.py, each logged on its own), group advantages
(tunix's GRPO / Dr.GRPO / RLOO), groups with equal rewards dropped and counted, and a clipped
policy-gradient update on completion-only log-probs (objective.py). The KL reference, when
grpo.beta > 0, is the starting SFT policy kept as its small adapter state.

Why not tunix's GRPOLearner: its rollout and its log-probs compute full-vocabulary logits at
every prompt position (measured slower and larger on an SFT step of this model: experiments/train_step_bench/README.md),
and its RLCluster keeps process-wide metrics listeners; this loop reuses tunix's pure functions
(advantages, aggregation, KL) and its checkpoint manager with the project's Generator and head.
A signal stops the loop between steps, never inside an update, and the last finished update is
saved; a re-run with the same run dir resumes with the same prompt order.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from tunix.sft.checkpoint_manager import CheckpointManager

from gemma_tool_use.generation.generator import Generator, SamplingParams
from gemma_tool_use.model.checkpoints import set_aside_corrupt_checkpoints
from gemma_tool_use.training.grpo import objective as grpo
from gemma_tool_use.training.grpo.rewards import (
    exact_match,
    made_call,
    parse_completions,
)
from gemma_tool_use.training.grpo.rollouts import rollout, step_prompts, train_batch
from gemma_tool_use.training.metrics import peak_rss_gib
from gemma_tool_use.training.optimizer import make_optimizer
from gemma_tool_use.utils.files import read_jsonl
from gemma_tool_use.utils.interrupt import (
    deferred_stops,
    raise_if_stop_requested,
    signals_ignored,
)
from gemma_tool_use.utils.progress import StepProgress

log = logging.getLogger(__name__)


def score(reward_fns, prompts, completions) -> dict[str, np.ndarray]:
    """Each reward term (unweighted) and the weighted total, one value per completion."""
    cols = {
        "tools": [prompts[c.prompt].tools for c in completions],
        "gold_calls": [prompts[c.prompt].gold_calls for c in completions],
        "stop_reasons": [c.stop_reason for c in completions],
        "categories": [prompts[c.prompt].category for c in completions],
    }
    texts = [c.text for c in completions]
    prompt_texts = [prompts[c.prompt].messages for c in completions]
    terms = {name: np.asarray(fn(prompt_texts, texts, **cols), np.float32) for name, _, fn in reward_fns}
    terms["total"] = sum(w * terms[name] for name, w, _ in reward_fns).astype(np.float32)
    return terms


def behaviour(prompts, completions, parsed) -> dict[str, float]:
    """Call rate where a call is needed, abstain rate where none fits, parse-error kinds, length."""
    need = [i for i, c in enumerate(completions) if prompts[c.prompt].gold_calls]
    none = [i for i, c in enumerate(completions) if not prompts[c.prompt].gold_calls]
    # An attempted call that does not parse is still a call (as the abstention reward counts it):
    # abstaining means no call block at all, the split BFCL's irrelevance passes need.
    called = [made_call(c.text, prompts[c.prompt].tools) for c in completions]
    out = {
        "rate/call_when_needed": float(np.mean([bool(parsed[i].calls) for i in need])) if need else None,
        "rate/abstain_when_no_fit": float(np.mean([not called[i] for i in none])) if none else None,
        "completion/tokens_mean": float(np.mean([len(c.token_ids) for c in completions])),
        "completion/stopped_share": float(np.mean([c.stop_reason == "stop" for c in completions])),
    }
    kinds = Counter(k for p in parsed for k in p.error_kinds)
    out.update({f"parse_errors/{k}": v / len(completions) for k, v in kinds.items()})
    return {k: v for k, v in out.items() if v is not None}


def run_probe(generator, probe, reward_fns, params) -> dict[str, float]:
    """Greedy completions on the fixed held-out-tool probe set: mean reward and exact match."""
    comps = rollout(generator, probe, 1, params)
    terms = score(reward_fns, probe, comps)
    exact = [exact_match(c.text, probe[c.prompt].tools, probe[c.prompt].gold_calls) for c in comps]
    return {
        "probe/reward_mean": float(terms["total"].mean()),
        "probe/exact_match": float(np.mean(exact)),
        **{f"probe/{k}": float(v.mean()) for k, v in terms.items() if k != "total"},
    }


class GrpoLoop:
    """The state of one GRPO run: optimizer, checkpoint manager, generator, counters. `train`
    below drives it; each piece is a method so that a step reads top to bottom."""

    def __init__(self, cfg, model, tokenizer, prompt_set, probe, reward_fns, run_dir: Path, tracker):
        g = cfg.grpo
        self.cfg, self.g, self.model, self.prompt_set, self.probe = cfg, g, model, prompt_set, probe
        self.reward_fns, self.run_dir, self.tracker = reward_fns, run_dir, tracker
        self.G, self.P, self.max_steps = int(g.num_generations), int(g.prompts_per_step), int(cfg.train.max_steps)
        self.D = int(g.get("draw_prompts_per_step") or self.P)  # prompts rolled out per step
        # The KL reference is the starting policy: its adapters, copied before any GRPO state is restored.
        self.reference = jax.tree.map(jnp.copy, nnx.state(model, nnx.LoRAParam)) if g.beta > 0 else None
        tx, self.schedule = make_optimizer(cfg.optim, self.max_steps)
        self.optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
        self.ckpt_root = (run_dir / "checkpoints").absolute()
        set_aside_corrupt_checkpoints(self.ckpt_root, log)
        self.manager = CheckpointManager(
            str(self.ckpt_root),
            ocp.CheckpointManagerOptions(
                save_interval_steps=int(cfg.train.checkpoint_every_steps),
                max_to_keep=int(cfg.train.max_checkpoints_to_keep),
            ),
        )
        self.start, meta = self.manager.maybe_restore(model, self.optimizer, restore_only_lora_params=True)
        self.counters = Counter({k: v for k, v in (meta or {}).items() if isinstance(v, (int, float))})
        if self.start:
            dropped = tracker.drop_records_after(self.start)
            log.info("resumed GRPO from step %d (%d metrics records of redone steps dropped)", self.start, dropped)
        gen_cfg = cfg.generation
        # one static batch holds every group: refill off whatever generation.refill says (a step waits
        # for all its rollouts anyway); generation.max_batch_tokens still caps a batch's memory
        self.generator = Generator.from_config(
            model,
            tokenizer,
            gen_cfg,
            batch_size=max(int(gen_cfg.batch_size), self.D * self.G),
            max_prompt_len=int(g.max_prompt_len),
            overlength="skip",
            refill=False,
            # Rollouts are sampled unconstrained: under a grammar the sampler draws from the masked,
            # renormalised policy, and the loss's log-probs of the unmasked policy would no longer
            # be those of the tokens' sampler (README "Constrained decoding").
            constrain="none",
        )
        if gen_cfg.get("constrain", "none") != "none":
            log.warning("generation.constrain=%s: GRPO rollouts stay unconstrained", gen_cfg.constrain)
        self.stop_ids = tuple(gen_cfg.stop_ids)
        self.greedy = SamplingParams(max_new_tokens=int(g.max_new_tokens), temperature=0.0, stop_ids=self.stop_ids)
        # Log-probs of the policy that sampled: logits / T, as the sampler used (T 0 or 1: unchanged).
        temperature = float(g.temperature) if g.temperature > 0 else 1.0
        self.train_step = grpo.AccumulatingStep(
            epsilon=float(g.epsilon),
            beta=float(g.beta),
            loss_agg_mode=str(g.loss_agg_mode),
            epsilon_high=float(g.epsilon_high if g.epsilon_high is not None else g.epsilon),
            temperature=temperature,
        )
        self.micro = int(g.micro_batch_size) or self.P * self.G
        self.logps_fn = nnx.jit(functools.partial(grpo.completion_logps, temperature=temperature))
        self.samples_path, self.probe_path = run_dir / "samples.jsonl", run_dir / "probe.jsonl"
        self.finished = self.start  # steps whose update is done

    def probe_now(self, step: int) -> None:
        self.generator.sync(self.model)
        rec = {"step": step, **run_probe(self.generator, self.probe, self.reward_fns, self.greedy)}
        with self.probe_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self.tracker.log({k: v for k, v in rec.items() if k != "step"}, step=step)
        log.info(
            "probe at step %d: reward %.3f, exact match %.3f", step, rec["probe/reward_mean"], rec["probe/exact_match"]
        )

    def save(self, step: int, force: bool = False) -> None:
        self.manager.save(
            step,
            self.model,
            self.optimizer,
            save_only_lora_params=True,
            force=force,
            custom_metadata=dict(self.counters),
        )

    def sample(self, step: int):
        """This step's prompts and G completions each from the current policy."""
        prompts = step_prompts(
            self.prompt_set,
            step,
            self.D,
            float(self.g.no_call_share),
            int(self.cfg.seed),
            float(self.g.several_calls_share),
        )
        self.generator.sync(self.model)  # sample from the weights the last update wrote
        g = self.g
        params = SamplingParams(
            max_new_tokens=int(g.max_new_tokens),
            temperature=float(g.temperature),
            top_p=float(g.top_p),
            top_k=int(g.top_k),
            stop_ids=self.stop_ids,
            seed=int(self.cfg.seed) * 1_000_003 + step,
        )  # a distinct seed per step
        return prompts, rollout(self.generator, prompts, self.G, params)

    def micro_batches(self, prompts, comps, adv, keep) -> list[dict]:
        """Only the kept rows, in micro-batches of a fixed row count (the last one padded with
        zero-weight rows), so memory is bounded by micro_batch_size."""
        rows, out = np.flatnonzero(keep), []
        for i in range(0, len(rows), self.micro):
            sel = list(rows[i : i + self.micro])
            pad = self.micro - len(sel)
            mb = train_batch(
                prompts,
                [comps[j] for j in sel + sel[:1] * pad],
                adv[sel + sel[:1] * pad],
                np.asarray([True] * len(sel) + [False] * pad),
                int(self.g.max_prompt_len),
                int(self.g.max_new_tokens),
            )
            out.append({k: jnp.asarray(v) for k, v in mb.items()})
        return out

    def logps(self, b: dict):
        return self.logps_fn(self.model, b["input_tokens"], b["input_mask"], b["target_positions"], b["target_ids"])

    def update(self, batches: list[dict]) -> dict[str, float]:
        """num_iterations clipped updates over the batches, with the old and reference log-probs."""
        if not batches:
            return {}
        if int(self.g.num_iterations) > 1:  # the rollout policy's log-probs, fixed for mu updates
            for b in batches:
                b["old_logps"] = self.logps(b)
        if self.reference is not None:
            current = jax.tree.map(lambda x: x, nnx.state(self.model, nnx.LoRAParam))
            nnx.update(self.model, self.reference)
            for b in batches:
                b["ref_logps"] = self.logps(b)
            nnx.update(self.model, current)
        for _ in range(int(self.g.num_iterations)):
            loss, aux = self.train_step(self.model, self.optimizer, batches)
        return {"loss": float(loss), **aux}

    def step(self, step: int) -> None:
        """One GRPO step: sample, score, advantages, update; then its record, samples and progress."""
        t0 = time.time()
        prompts, comps = self.sample(step)
        rollout_s = time.time() - t0
        t1 = time.time()
        terms = score(self.reward_fns, prompts, comps)
        total = terms["total"]
        adv = np.asarray(grpo.group_advantages(jnp.asarray(total), self.G, str(self.g.advantage)), np.float32)
        flat = np.asarray(grpo.zero_variance_groups(jnp.asarray(total), self.G), bool)
        trained = groups_to_train(flat, self.P, bool(self.g.drop_zero_variance_groups))
        keep = np.repeat(trained, self.G)
        batches = self.micro_batches(prompts, comps, adv, keep)
        aux_means = self.update(batches)
        update_s = time.time() - t1
        update_positions = int(sum(float(b["input_mask"].sum()) for b in batches))
        new_tokens = sum(len(c.token_ids) for c in comps)
        self.counters["trained_tokens"] += int(sum(float(b["completion_mask"].sum()) for b in batches))
        self.counters["generated_tokens"] += new_tokens
        self.counters["zero_variance_groups"] += int(flat.sum())
        self.counters["groups"] += len(flat)
        self.counters["groups_trained"] += int(trained.sum())
        rec = step_record(prompts, comps, terms, aux_means)
        rec |= {
            "groups/zero_variance_share": float(flat.mean()),
            "groups/trained": int(trained.sum()),
            "train/learning_rate": float(self.schedule(step)),
            "time/rollout_s": rollout_s,
            "time/update_s": update_s,
            "perf/rollout_new_tokens_per_s": new_tokens / rollout_s if rollout_s > 0 else 0.0,
            "perf/update_tokens_per_s": update_positions / update_s if update_s > 0 else 0.0,
            "perf/peak_rss_gib": peak_rss_gib(),
        }
        self.tracker.log(rec, step=step + 1)
        self.log_samples(step, prompts, comps, adv, terms)
        self.progress.update(
            step + 1,
            reward=round(float(total.mean()), 3),
            reward_std=round(float(total.std()), 3),
            flat_groups=f"{int(flat.sum())}/{len(flat)}",
            rollout_s=round(rollout_s, 1),
            update_s=round(update_s, 1),
            rss_gib=round(peak_rss_gib(), 2),
        )

    def log_samples(self, step: int, prompts, comps, adv, terms) -> None:
        """The first completion of the first groups, with its rewards, to samples.jsonl."""
        with self.samples_path.open("a", encoding="utf-8") as f:
            for k in range(0, min(int(self.g.samples_to_log), self.D) * self.G, self.G):
                c = comps[k]
                f.write(
                    json.dumps(
                        {
                            "step": step + 1,
                            "category": prompts[c.prompt].category,
                            "gold_calls": prompts[c.prompt].gold_calls,
                            "completion": c.text,
                            "stop_reason": c.stop_reason,
                            "advantage": float(adv[k]),
                            **{f"reward/{n}": float(v[k]) for n, v in terms.items()},
                        },
                        ensure_ascii=True,
                    )
                    + "\n"
                )

    def run(self) -> dict:
        self.progress = StepProgress(self.max_steps, self.start, "grpo", interval_s=0.0)  # a step is long: a line each
        t_loop = time.time()
        try:
            with deferred_stops():  # a signal stops the loop between steps, never inside an update
                if self.start == 0 and self.probe:
                    self.probe_now(0)
                for step in range(self.start, self.max_steps):
                    self.step(step)
                    self.finished = step + 1
                    self.save(self.finished)
                    if self.probe and ((step + 1) % int(self.g.probe_every_steps) == 0 or step + 1 == self.max_steps):
                        self.probe_now(step + 1)
                    raise_if_stop_requested()
        except KeyboardInterrupt as e:
            with signals_ignored():
                if self.finished > (self.manager.latest_step() or 0):
                    self.save(self.finished, force=True)  # the last finished update
                self.manager.close()
            log.warning(
                "stopped (%s) after step %d; checkpoint saved, re-run with hydra.run.dir=%s to resume",
                getattr(e, "signal_name", "SIGINT"),
                self.finished,
                self.run_dir,
            )
            raise
        self.progress.close()
        if self.max_steps > (self.manager.latest_step() or 0):
            self.save(self.max_steps, force=True)
        self.manager.close()
        self.log_sample_table()
        return self.summary(time.time() - t_loop)

    def log_sample_table(self) -> None:
        """The sample completions with their rewards, as a W&B table too."""
        if self.samples_path.is_file():
            samples = read_jsonl(self.samples_path)
            cols = ["step", "category", "completion", "stop_reason", "advantage", "reward/total"]
            self.tracker.log_table("grpo/samples", cols, [[str(r.get(c)) for c in cols] for r in samples[-200:]])

    def summary(self, loop_seconds: float) -> dict:
        c, steps_here = self.counters, self.max_steps - self.start
        return {
            "steps": self.max_steps,
            "resumed_from_step": self.start,
            "loop_seconds": round(loop_seconds, 1),
            # this process's steps only (None when a resume found none left): step_seconds covers all
            "seconds_per_step": round(loop_seconds / steps_here, 2) if steps_here > 0 else None,
            "zero_variance_groups": int(c["zero_variance_groups"]),
            "groups": int(c["groups"]),
            "groups_trained": int(c["groups_trained"]),
            "trained_tokens": int(c["trained_tokens"]),
            "generated_tokens": int(c["generated_tokens"]),
            "peak_rss_gib": round(peak_rss_gib(), 2),
            "checkpoint_dir": str(self.ckpt_root),
        }


def groups_to_train(flat: np.ndarray, limit: int, drop_flat: bool) -> np.ndarray:
    """Which drawn groups the update trains on: the first `limit` of them, flat ones (equal
    rewards: no gradient) skipped when drop_flat; with more groups drawn than `limit`, the spare
    ones stand in for the flat ones (dynamic sampling)."""
    eligible = ~flat if drop_flat else np.ones_like(flat)
    chosen = np.zeros_like(eligible)
    chosen[np.flatnonzero(eligible)[:limit]] = True
    return chosen


def step_record(prompts, comps, terms: dict, aux_means: dict) -> dict[str, float]:
    """A step's rewards (mean, std, by category), behaviour and update figures."""
    total = terms["total"]
    # the rewards' parse cache: each completion was parsed once already, when scored
    parsed = parse_completions([c.text for c in comps], [prompts[c.prompt].tools for c in comps])
    rec = {f"reward/{k}_mean": float(v.mean()) for k, v in terms.items()}
    rec |= {f"reward/{k}_std": float(v.std()) for k, v in terms.items()}
    for cat in sorted({p.category for p in prompts}):
        idx = [i for i, c in enumerate(comps) if prompts[c.prompt].category == cat]
        rec[f"reward_by_category/{cat}"] = float(total[idx].mean())
    rec |= behaviour(prompts, comps, parsed)
    rec |= {f"train/{k}": v for k, v in aux_means.items()}
    return rec


def train(cfg, model, tokenizer, prompt_set, probe, reward_fns, run_dir: Path, tracker) -> dict:
    """The GRPO loop over `train.max_steps` steps (resuming from the run dir's checkpoints);
    returns the summary. Tests call it with toy rewards on the tiny model."""
    return GrpoLoop(cfg, model, tokenizer, prompt_set, probe, reward_fns, run_dir, tracker).run()


def step_times(metrics_path: Path) -> dict:
    """Seconds per step over every recorded step, those before a resume included (the counters
    of `train`'s summary cover only the steps this process ran)."""
    recs = [r for r in read_jsonl(metrics_path) if "time/rollout_s" in r] if metrics_path.is_file() else []
    if not recs:
        return {}
    per_step = [r["time/rollout_s"] + r["time/update_s"] for r in recs]
    return {
        "recorded_steps": len(recs),
        "step_seconds": {
            "mean": round(sum(per_step) / len(per_step), 1),
            "min": round(min(per_step), 1),
            "max": round(max(per_step), 1),
        },
        "rollout_seconds_mean": round(sum(r["time/rollout_s"] for r in recs) / len(recs), 1),
        "update_seconds_mean": round(sum(r["time/update_s"] for r in recs) / len(recs), 1),
        "zero_variance_share_mean": round(sum(r["groups/zero_variance_share"] for r in recs) / len(recs), 3),
        "peak_rss_gib_max": round(max(r.get("perf/peak_rss_gib", 0.0) for r in recs), 2),
    }
