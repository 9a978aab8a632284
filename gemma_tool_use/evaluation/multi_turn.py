"""BFCL multi-turn inference: the model's calls run against BFCL's simulated APIs, results go
back as <tool_response> turns, BFCL's step limit applies; verdicts come from bfcl-eval.

Follows bfcl-eval's function-calling inference loop (base_handler.inference_multi_turn_FC):
a turn ends when the model answers without a (decodable) call; held-out functions arrive at
their turn with BFCL's "I have updated some more functions" user message; more than
MAXIMUM_STEP_LIMIT steps in a turn force-quits the entry. Dialogues advance in lockstep so
each step's prompts are generated as one batch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gemma_tool_use.evaluation import bfcl
from gemma_tool_use.format.parse import parse_model_output
from gemma_tool_use.format.render import render_conversation
from gemma_tool_use.generation.tool_grammar import grammars_for


@dataclass
class Dialogue:
    entry: dict
    tools: list
    messages: list
    turn: int = 0
    steps: int = 0
    results: list = field(default_factory=lambda: [[]])  # per turn, per step: raw model text
    done: bool = False
    error: str | None = None
    prompt_tokens: list = field(default_factory=list)
    new_tokens: int = 0


def _model_key() -> str:
    return bfcl.MODEL_NAME.replace("/", "_").replace("-", "_").replace(".", "_")


def purge_api_state(entry_id: str) -> None:
    """bfcl-eval keeps simulated API instances in module globals keyed by model and entry id;
    drop ours so that no state leaks from an earlier run in the same process."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils

    tag = re.sub(r"[-./:]", "_", entry_id)
    prefix = re.sub(r"[-./:]", "_", bfcl.MODEL_NAME)
    for name in [n for n in vars(multi_turn_utils) if n.startswith(prefix) and f"_{tag}_" in n]:
        del vars(multi_turn_utils)[name]


def _start(entry: dict) -> Dialogue:
    purge_api_state(entry["id"])
    first = [{"role": m["role"], "content": m["content"]} for m in entry["question"][0]]
    return Dialogue(entry=entry, tools=bfcl.bfcl_tools(entry.get("function", [])), messages=first)


def _next_turn(d: Dialogue) -> None:
    from bfcl_eval.constants.default_prompts import (
        DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC,
    )

    d.turn += 1
    d.steps = 0
    if d.turn >= len(d.entry["question"]):
        d.done = True
        return
    d.results.append([])
    held_out = d.entry.get("missed_function", {}).get(str(d.turn))
    if held_out:
        d.tools = d.tools + bfcl.bfcl_tools(held_out)
        d.messages.append({"role": "user", "content": DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC})
    else:
        d.messages.extend({"role": m["role"], "content": m["content"]} for m in d.entry["question"][d.turn])


def _execute(d: Dialogue, calls: list[str]) -> list[str]:
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import (
        execute_multi_turn_func_call,
    )

    category = d.entry["id"].rsplit("_", 1)[0]
    outputs, _ = execute_multi_turn_func_call(
        calls,
        d.entry.get("initial_config", {}),
        d.entry["involved_classes"],
        _model_key(),
        d.entry["id"],
        long_context=("long_context" in category or "composite" in category),
        is_evaL_run=False,
    )
    return outputs


def run_dialogues(entries, generator, tokenizer, params, system_prompt=None, on_done=None) -> list[Dialogue]:
    """Run every entry to completion; `on_done(dialogue)` fires as each one finishes."""
    from bfcl_eval.constants.default_prompts import MAXIMUM_STEP_LIMIT
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils import (
        is_empty_execute_response,
    )

    h = bfcl.handler()
    kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
    dialogues = [_start(e) for e in entries]
    while True:
        active = [d for d in dialogues if not d.done]
        if not active:
            break
        prompts = [
            render_conversation(
                {"tools": d.tools, "messages": d.messages}, tokenizer, add_generation_prompt=True, **kwargs
            ).ids
            for d in active
        ]
        grammars = grammars_for([d.tools for d in active], generator.constrain)
        for d, r in zip(active, generator.generate_ids(prompts, params, grammars=grammars)):
            d.prompt_tokens.append(r.prompt_tokens)
            if r.stop_reason == "skipped_overlength":
                d.error, d.done = f"prompt_too_long ({r.prompt_tokens} tokens)", True
                continue
            d.new_tokens += len(r.token_ids)
            d.results[-1].append(r.text)
            parsed = parse_model_output(r.text)
            d.messages.append({"role": "assistant", "content": parsed.text, "tool_calls": parsed.calls})
            try:
                calls = h.decode_execute(r.text)
            except Exception:  # BFCL: a response that does not decode ends the turn
                calls = None
            if not calls or is_empty_execute_response(calls):
                _next_turn(d)
                continue
            for call, out in zip(parsed.calls, _execute(d, calls)):
                d.messages.append({"role": "tool", "name": call["name"], "content": out})
            d.steps += 1
            if d.steps > MAXIMUM_STEP_LIMIT:
                d.error, d.done = f"force-quit after {MAXIMUM_STEP_LIMIT} steps", True
        for d in active:
            if d.done and on_done:
                on_done(d)
    return dialogues


def score_dialogue(category: str, d: Dialogue, ground_truth: list, original_entry: dict) -> dict:
    """bfcl-eval's verdict (multi_turn_checker behind it); `original_entry` loaded with hints=False."""
    from bfcl_eval.eval_checker import eval_runner

    purge_api_state(d.entry["id"])  # the checker replays calls on fresh API instances
    out = eval_runner._evaluate_single_multi_turn_entry(
        bfcl.handler(), d.entry["id"], d.results, ground_truth, dict(original_entry), bfcl.MODEL_NAME, category
    )
    err = out.get("error")
    return {
        "valid": bool(out["valid"]),
        "error_type": err.get("error_type") if isinstance(err, dict) else None,
        "error": err.get("error_message") if isinstance(err, dict) else None,
    }
