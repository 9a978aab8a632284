"""Stage 5: GRPO with tool-call rewards (`stage=grpo`).

Starts from an SFT run (`train.init_from`: a run dir, checkpoint or exact experiment name) and
trains the same parameters SFT trained: the LoRA adapters and the turn-marker embedding rows.
Each step: a seeded set of prompts from the training mix (a share of them with no fitting tool),
G sampled completions each from the *current* policy (the generator is re-synced after every
update), rewards as plain functions (gemma_tool_use/rewards.py, each logged on its own), group
advantages (tunix's GRPO / Dr.GRPO / RLOO), groups with equal rewards dropped and counted, and a
clipped policy-gradient update on completion-only log-probs (gemma_tool_use/grpo.py). The KL
reference, when grpo.beta > 0, is the starting SFT policy kept as its small adapter state.

Why not tunix's GRPOLearner: its rollout and its log-probs compute full-vocabulary logits at
every prompt position (measured 2.0x slower and +2.9 GiB on an SFT step of this model), and its
RLCluster keeps process-wide metrics listeners; this loop reuses tunix's pure functions
(advantages, aggregation, KL) and its checkpoint manager with the project's Generator and head.

Run dir: checkpoints/<step>/ (the SFT layout: `model.lora_checkpoint=<run dir>`, `stage=eval`
and `stage=predict` load it), metrics.jsonl (one line per step), samples.jsonl (completions with
their rewards), probe.jsonl, grpo_summary.json, reward_curve.png, bfcl_eval/ (after training).
Re-running with the same hydra.run.dir resumes with the same prompt order.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np

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
    cols = {"tools": [prompts[c.prompt].tools for c in completions],
            "gold_calls": [prompts[c.prompt].gold_calls for c in completions],
            "stop_reasons": [c.stop_reason for c in completions],
            "categories": [prompts[c.prompt].category for c in completions]}
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
    out = {"rate/call_when_needed": float(np.mean([bool(parsed[i].calls) for i in need])) if need else None,
           "rate/abstain_when_no_fit": float(np.mean([not called[i] for i in none])) if none else None,
           "completion/tokens_mean": float(np.mean([len(c.token_ids) for c in completions])),
           "completion/stopped_share": float(np.mean([c.stop_reason == "stop" for c in completions]))}
    kinds = Counter(k for p in parsed for k in p.error_kinds)
    out.update({f"parse_errors/{k}": v / len(completions) for k, v in kinds.items()})
    return {k: v for k, v in out.items() if v is not None}


def run_probe(generator, probe, reward_fns, params) -> dict[str, float]:
    """Greedy completions on the fixed held-out-tool probe set: mean reward and exact match."""
    comps = rollout(generator, probe, 1, params)
    terms = score(reward_fns, probe, comps)
    exact = [exact_match(c.text, probe[c.prompt].tools, probe[c.prompt].gold_calls) for c in comps]
    return {"probe/reward_mean": float(terms["total"].mean()), "probe/exact_match": float(np.mean(exact)),
            **{f"probe/{k}": float(v.mean()) for k, v in terms.items() if k != "total"}}


def train(cfg, model, tokenizer, prompt_set, probe, reward_fns, run_dir: Path, tracker) -> dict:
    """The GRPO loop over `train.max_steps` steps (resuming from the run dir's checkpoints);
    returns the summary. Tests call it with toy rewards on the tiny model."""
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp
    from flax import nnx
    from tunix.sft.checkpoint_manager import CheckpointManager


    g = cfg.grpo
    G, P, max_steps = int(g.num_generations), int(g.prompts_per_step), int(cfg.train.max_steps)
    # The KL reference is the starting policy: its adapters, copied before any GRPO state is restored.
    reference = jax.tree.map(jnp.copy, nnx.state(model, nnx.LoRAParam)) if g.beta > 0 else None
    tx, schedule = make_optimizer(cfg.optim, max_steps)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.LoRAParam)
    ckpt_root = (run_dir / "checkpoints").absolute()
    set_aside_corrupt_checkpoints(ckpt_root, log)
    manager = CheckpointManager(str(ckpt_root), ocp.CheckpointManagerOptions(
        save_interval_steps=int(cfg.train.checkpoint_every_steps), max_to_keep=int(cfg.train.max_checkpoints_to_keep)))
    start, meta = manager.maybe_restore(model, optimizer, restore_only_lora_params=True)
    counters = Counter({k: v for k, v in (meta or {}).items() if isinstance(v, (int, float))})
    if start:
        dropped = tracker.drop_records_after(start)
        log.info("resumed GRPO from step %d (%d metrics records of redone steps dropped)", start, dropped)

    gen_cfg = cfg.generation
    # one static batch holds every group: refill off whatever generation.refill says (a step waits
    # for all its rollouts anyway); generation.max_batch_tokens still caps a batch's memory
    generator = Generator.from_config(model, tokenizer, gen_cfg, batch_size=max(int(gen_cfg.batch_size), P * G),
                                      max_prompt_len=int(g.max_prompt_len), overlength="skip", refill=False)
    stop_ids = tuple(gen_cfg.stop_ids)
    greedy = SamplingParams(max_new_tokens=int(g.max_new_tokens), temperature=0.0, stop_ids=stop_ids)
    # Log-probs of the policy that sampled: logits / T, as the sampler used (T 0 or 1: unchanged).
    temperature = float(g.temperature) if g.temperature > 0 else 1.0
    train_step = grpo.AccumulatingStep(epsilon=float(g.epsilon), beta=float(g.beta), loss_agg_mode=str(g.loss_agg_mode),
                                       epsilon_high=float(g.epsilon_high if g.epsilon_high is not None else g.epsilon),
                                       temperature=temperature)
    micro = int(g.micro_batch_size) or P * G
    logps_fn = nnx.jit(functools.partial(grpo.completion_logps, temperature=temperature))
    samples_path, probe_path = run_dir / "samples.jsonl", run_dir / "probe.jsonl"

    def probe_now(step):
        generator.sync(model)
        rec = {"step": step, **run_probe(generator, probe, reward_fns, greedy)}
        with probe_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        tracker.log({k: v for k, v in rec.items() if k != "step"}, step=step)
        log.info("probe at step %d: reward %.3f, exact match %.3f", step, rec["probe/reward_mean"],
                 rec["probe/exact_match"])

    def save(step, force=False):
        manager.save(step, model, optimizer, save_only_lora_params=True, force=force, custom_metadata=dict(counters))


    progress = StepProgress(max_steps, start, "grpo", interval_s=0.0)  # a GRPO step is long: a line each
    t_loop = time.time()
    finished = start  # steps whose update is done
    try:
        with deferred_stops():  # a signal stops the loop between steps, never inside an update
            if start == 0 and probe:
                probe_now(0)
            for step in range(start, max_steps):
                t0 = time.time()
                prompts = step_prompts(prompt_set, step, P, float(g.no_call_share), int(cfg.seed))
                generator.sync(model)  # sample from the weights the last update wrote
                params = SamplingParams(max_new_tokens=int(g.max_new_tokens), temperature=float(g.temperature),
                                        top_p=float(g.top_p), top_k=int(g.top_k), stop_ids=stop_ids,
                                        seed=int(cfg.seed) * 1_000_003 + step)  # a distinct seed per step
                comps = rollout(generator, prompts, G, params)
                rollout_s = time.time() - t0

                t1 = time.time()
                terms = score(reward_fns, prompts, comps)
                total = terms["total"]
                adv = np.asarray(grpo.group_advantages(jnp.asarray(total), G, str(g.advantage)), np.float32)
                flat = np.asarray(grpo.zero_variance_groups(jnp.asarray(total), G), bool)
                keep = np.repeat(~flat if g.drop_zero_variance_groups else np.ones_like(flat), G)
                # Only the kept rows are computed, in micro-batches of a fixed row count (the last one
                # padded with zero-weight rows), so memory is bounded by micro_batch_size.
                rows = np.flatnonzero(keep)
                micro_batches = []
                for i in range(0, len(rows), micro):
                    sel = list(rows[i:i + micro])
                    pad = micro - len(sel)
                    mb = train_batch(prompts, [comps[j] for j in sel + sel[:1] * pad], adv[sel + sel[:1] * pad],
                                     np.asarray([True] * len(sel) + [False] * pad), int(g.max_prompt_len),
                                     int(g.max_new_tokens))
                    micro_batches.append({k: jnp.asarray(v) for k, v in mb.items()})
                aux_means: dict[str, float] = {}
                if micro_batches:
                    for b in micro_batches:
                        if int(g.num_iterations) > 1:  # the rollout policy's log-probs, fixed for mu updates
                            b["old_logps"] = logps_fn(model, b["input_tokens"], b["input_mask"], b["target_positions"],
                                                      b["target_ids"])
                    if reference is not None:
                        current = jax.tree.map(lambda x: x, nnx.state(model, nnx.LoRAParam))
                        nnx.update(model, reference)
                        for b in micro_batches:
                            b["ref_logps"] = logps_fn(model, b["input_tokens"], b["input_mask"],
                                                      b["target_positions"], b["target_ids"])
                        nnx.update(model, current)
                    for _ in range(int(g.num_iterations)):
                        loss, aux = train_step(model, optimizer, micro_batches)
                    aux_means = {"loss": float(loss), **aux}
                update_s = time.time() - t1

                trained_tokens = int(sum(float(b["completion_mask"].sum()) for b in micro_batches))
                update_positions = int(sum(float(b["input_mask"].sum()) for b in micro_batches))
                new_tokens = sum(len(c.token_ids) for c in comps)
                counters["trained_tokens"] += trained_tokens
                counters["generated_tokens"] += new_tokens
                counters["zero_variance_groups"] += int(flat.sum())
                counters["groups"] += len(flat)
                # the rewards' parse cache: each completion was parsed once already, when scored
                parsed = parse_completions([c.text for c in comps], [prompts[c.prompt].tools for c in comps])
                rec = {f"reward/{k}_mean": float(v.mean()) for k, v in terms.items()}
                rec |= {f"reward/{k}_std": float(v.std()) for k, v in terms.items()}
                for cat in sorted({p.category for p in prompts}):
                    idx = [i for i, c in enumerate(comps) if prompts[c.prompt].category == cat]
                    rec[f"reward_by_category/{cat}"] = float(total[idx].mean())
                rec |= behaviour(prompts, comps, parsed)
                rec |= {f"train/{k}": v for k, v in aux_means.items()}
                rec |= {"groups/zero_variance_share": float(flat.mean()), "train/learning_rate": float(schedule(step)),
                        "time/rollout_s": rollout_s, "time/update_s": update_s,
                        "perf/rollout_new_tokens_per_s": new_tokens / rollout_s if rollout_s > 0 else 0.0,
                        "perf/update_tokens_per_s": update_positions / update_s if update_s > 0 else 0.0,
                        "perf/peak_rss_gib": peak_rss_gib()}
                tracker.log(rec, step=step + 1)
                with samples_path.open("a", encoding="utf-8") as f:  # the first completion of the first groups
                    for k in range(0, min(int(g.samples_to_log), P) * G, G):
                        c = comps[k]
                        f.write(json.dumps({"step": step + 1, "category": prompts[c.prompt].category,
                                            "gold_calls": prompts[c.prompt].gold_calls, "completion": c.text,
                                            "stop_reason": c.stop_reason, "advantage": float(adv[k]),
                                            **{f"reward/{n}": float(v[k]) for n, v in terms.items()}},
                                           ensure_ascii=True) + "\n")
                progress.update(step + 1, reward=round(float(total.mean()), 3), reward_std=round(float(total.std()), 3),
                                flat_groups=f"{int(flat.sum())}/{len(flat)}", rollout_s=round(rollout_s, 1),
                                update_s=round(update_s, 1), rss_gib=round(peak_rss_gib(), 2))
                finished = step + 1
                save(finished)
                if probe and ((step + 1) % int(g.probe_every_steps) == 0 or step + 1 == max_steps):
                    probe_now(step + 1)
                raise_if_stop_requested()
    except KeyboardInterrupt as e:
        with signals_ignored():
            if finished > (manager.latest_step() or 0):
                save(finished, force=True)  # the last finished update
            manager.close()
        log.warning("stopped (%s) after step %d; checkpoint saved, re-run with hydra.run.dir=%s to resume",
                    getattr(e, "signal_name", "SIGINT"), finished, run_dir)
        raise
    progress.close()
    if max_steps > (manager.latest_step() or 0):
        save(max_steps, force=True)
    manager.close()
    if samples_path.is_file():  # the sample completions with their rewards, as a W&B table too

        samples = read_jsonl(samples_path)
        cols = ["step", "category", "completion", "stop_reason", "advantage", "reward/total"]
        tracker.log_table("grpo/samples", cols, [[str(r.get(c)) for c in cols] for r in samples[-200:]])
    return {"steps": max_steps, "resumed_from_step": start, "loop_seconds": round(time.time() - t_loop, 1),
            # this process's steps only (None when a resume found none left): step_seconds covers all
            "seconds_per_step": round((time.time() - t_loop) / (max_steps - start), 2) if max_steps > start else None,
            "zero_variance_groups": int(counters["zero_variance_groups"]), "groups": int(counters["groups"]),
            "trained_tokens": int(counters["trained_tokens"]), "generated_tokens": int(counters["generated_tokens"]),
            "peak_rss_gib": round(peak_rss_gib(), 2), "checkpoint_dir": str(ckpt_root)}


def step_times(metrics_path: Path) -> dict:
    """Seconds per step over every recorded step, those before a resume included (the counters
    of `train`'s summary cover only the steps this process ran)."""
    recs = [r for r in read_jsonl(metrics_path) if "time/rollout_s" in r] if metrics_path.is_file() else []
    if not recs:
        return {}
    per_step = [r["time/rollout_s"] + r["time/update_s"] for r in recs]
    return {"recorded_steps": len(recs), "step_seconds": {"mean": round(sum(per_step) / len(per_step), 1),
                                                          "min": round(min(per_step), 1), "max": round(max(per_step), 1)},
            "rollout_seconds_mean": round(sum(r["time/rollout_s"] for r in recs) / len(recs), 1),
            "update_seconds_mean": round(sum(r["time/update_s"] for r in recs) / len(recs), 1),
            "zero_variance_share_mean": round(sum(r["groups/zero_variance_share"] for r in recs) / len(recs), 3),
            "peak_rss_gib_max": round(max(r.get("perf/peak_rss_gib", 0.0) for r in recs), 2)}
