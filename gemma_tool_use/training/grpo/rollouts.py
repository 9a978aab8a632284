"""GRPO's data side: prompts taken from the training mixes, sampled groups of completions from
the current policy, and the fixed-shape batch the policy update trains on.

A prompt is the conversation up to the first model turn of a single-turn training row; its gold
answer is that turn's calls (an empty list: no offered tool fits, the model should abstain).
Completions keep the stop id that ended them, so the policy is trained (and rewarded) for
ending its turn, not only for the calls.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from gemma_tool_use.data.batching import collate
from gemma_tool_use.data.conversations import load_jsonl_conversations
from gemma_tool_use.data.mix import build_mix
from gemma_tool_use.data.rows import classify
from gemma_tool_use.format.render import RenderedConversation, render_conversation


@dataclass
class Prompt:
    ids: list[int]
    tools: list[dict]
    messages: list[dict]
    gold_calls: list[dict]  # [] = abstain
    category: str
    source: str = ""


@dataclass
class Completion:
    prompt: int  # index into the step's prompts
    token_ids: list[int]  # generated ids, the stop id included when the model stopped
    text: str
    stop_reason: str  # "stop" | "length"


@dataclass
class PromptSet:
    prompts: list[Prompt]
    dropped: Counter = field(default_factory=Counter)

    def split_by_gold(self) -> tuple[list[Prompt], list[Prompt]]:
        return [p for p in self.prompts if p.gold_calls], [p for p in self.prompts if not p.gold_calls]


def build_prompt_set(
    rows: list[dict], tokenizer, *, system_prompt: str | None, max_prompt_len: int, categories
) -> PromptSet:
    """Single-turn rows of `categories` as prompts (rows whose prompt renders longer than
    max_prompt_len tokens are left out and counted)."""
    out, dropped = [], Counter()
    kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
    for row in rows:
        category = row.get("meta", {}).get("category")
        if category not in categories:
            dropped[f"category:{category}"] += 1
            continue
        msgs = row["messages"]
        first = next((i for i, m in enumerate(msgs) if m["role"] == "assistant"), None)
        if first is None:
            dropped["no_model_turn"] += 1
            continue
        conv = {"tools": row["tools"], "messages": msgs[:first]}
        ids = render_conversation(conv, tokenizer, add_generation_prompt=True, **kwargs).ids
        if len(ids) > max_prompt_len:
            dropped["prompt_too_long"] += 1
            continue
        gold = [{"name": c["name"], "args": c.get("args", {})} for c in (msgs[first].get("tool_calls") or [])]
        out.append(
            Prompt(
                [int(t) for t in ids],
                row["tools"],
                msgs[:first],
                gold,
                category,
                str(row.get("meta", {}).get("source", "")),
            )
        )
    return PromptSet(out, dropped)


def prompt_rows(data_cfg, seed: int) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows) for GRPO prompts: the mix of `data.sources` (its validation rows
    use tools never trained on), or the conversations of data.train_files / data.val_files."""
    if data_cfg.sources:
        train, val, _ = build_mix(data_cfg, seed)
        return train, val

    def load(files):
        rows = [r for f in files for r in load_jsonl_conversations(f, strict=bool(data_cfg.strict))]
        return [dict(r, meta={**r.get("meta", {}), "category": classify(r)}) for r in rows]

    train = load(data_cfg.train_files)
    return train, (load(data_cfg.val_files) if data_cfg.val_files else train)


def _nth(pool: list, index: int, seed: int):
    """pool[index] in a fresh seeded permutation per pass over the pool: the order of every step is a
    pure function of (seed, step), so a resumed run sees the same prompts as a straight one."""
    epoch, i = divmod(index, len(pool))
    order = list(range(len(pool)))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return pool[order[i]]


def step_prompts(
    prompt_set: PromptSet, step: int, n: int, no_call_share: float, seed: int, several_calls_share: float = 0.0
) -> list[Prompt]:
    """The `n` prompts of a step: round(n * no_call_share) abstention prompts (when the set has
    any), the rest with gold calls; of those, round(rest * several_calls_share) need several calls
    (when the set has any: the call count is what the SFT model gets wrong most), the others are
    drawn from every call prompt as before."""
    calls, no_calls = prompt_set.split_by_gold()
    n_no = min(n, round(n * no_call_share)) if no_calls else 0
    if not calls:
        n_no = n
    several = [p for p in calls if len(p.gold_calls) >= 2]
    n_several = round((n - n_no) * several_calls_share) if several else 0
    n_any = n - n_no - n_several
    chosen = [_nth(calls, step * n_any + j, seed) for j in range(n_any)]
    chosen += [_nth(several, step * n_several + j, seed + 2) for j in range(n_several)]
    chosen += [_nth(no_calls, step * n_no + j, seed + 1) for j in range(n_no)]
    return chosen


def probe_prompts(prompt_set: PromptSet, size: int, no_call_share: float, seed: int) -> list[Prompt]:
    """A fixed probe set (the first `size` of a seeded order, with the same no-call share)."""
    calls, no_calls = prompt_set.split_by_gold()
    n_no = min(len(no_calls), round(size * no_call_share))
    rng = random.Random(f"probe:{seed}")
    return rng.sample(calls, min(len(calls), size - n_no)) + rng.sample(no_calls, n_no)


def rollout(generator, prompts: list[Prompt], num_generations: int, sampling) -> list[Completion]:
    """`num_generations` sampled completions per prompt, grouped (prompt 0's group first)."""
    ids = [p.ids for p in prompts for _ in range(num_generations)]
    out = []
    for k, g in enumerate(generator.generate_ids(ids, sampling)):
        tokens = list(g.token_ids) + ([int(g.stop_id)] if g.stop_reason == "stop" and g.stop_id is not None else [])
        out.append(Completion(k // num_generations, tokens, g.text, g.stop_reason))
    return out


def train_batch(
    prompts: list[Prompt],
    completions: list[Completion],
    advantages: np.ndarray,
    keep: np.ndarray,
    max_prompt_len: int,
    max_new_tokens: int,
) -> dict[str, np.ndarray]:
    """Prompt + completion rows through the SFT collator (right-padded to a multiple of 128, loss
    targets gathered at the completion tokens, the stop id included, each row's in its own slots:
    the objective sums per sequence): `completion_mask` is its
    target weights, zeroed on rows with keep=False (their group carries no signal), so the batch
    shape does not depend on which groups were dropped."""
    rows = [
        RenderedConversation(
            np.asarray(prompts[c.prompt].ids + c.token_ids, np.int32),
            np.asarray([False] * len(prompts[c.prompt].ids) + [True] * len(c.token_ids), bool),
        )
        for c in completions
    ]
    batch = collate(rows, list(range(128, max_prompt_len + max_new_tokens + 128, 128)), per_row_slots=True)
    return {
        "input_tokens": batch["input_tokens"],
        "input_mask": batch["input_mask"],
        "target_positions": batch["target_positions"],
        "target_ids": batch["target_ids"],
        "completion_mask": batch["target_weights"] * np.asarray(keep, np.float32)[:, None],
        "advantages": np.asarray(advantages, np.float32),
    }
