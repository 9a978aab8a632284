"""How many gold answers the tool-call grammar accepts: every assistant turn of the cpu recipe's
training mixes (sft_small and sft_full, train and validation rows, before the length cap), and
BFCL's ground truths rendered in our format. Each refusal gets a reason.

    GEMMA_TOOL_USE_DATA=../shared/datasets .venv/bin/python scripts/measure_grammar_acceptance.py \\
        --out experiments/constrained_decoding/grammar_acceptance.json

A turn is accepted when the grammar of its conversation's tools (generation/tool_grammar.py,
tool_choice auto) takes all its tokens, as the trainer tokenizes them, and then <end_of_turn>.
Reasons for a refusal, tried in this order: the arguments' keys are not in schema order (the
turn is accepted once reordered); '</' written '<\\/' (accepted once unescaped); a JSON Schema
violation (jsonschema names it); otherwise "other", with the text kept as an example.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPE = {  # conf/pipeline/cpu.yaml's data overrides of each stage
    "sft_small": ["stage=sft_small", "data.augment.near_miss=0.35"],
    "sft_full": ["stage=sft_full", "data.augment.near_miss=0.4", "data.augment.procedural_parallel=0.1"],
}
DEFAULT_CATEGORIES = ["simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple"]


class Checker:
    def __init__(self, tokenizer):
        from gemma_tool_use.generation import grammar_matcher
        from gemma_tool_use.model.tokenizer import END_OF_TURN_ID, EOS_ID

        self.tokenizer, self.end = tokenizer, END_OF_TURN_ID
        self.grammars = grammar_matcher.GrammarCache(
            grammar_matcher.grammar_tokenizer(tokenizer, (EOS_ID, END_OF_TURN_ID))
        )

    def accepts(self, grammar: str, text: str) -> bool:
        return self.grammars.first_refused(grammar, self.tokenizer.encode(text) + [self.end]) is None

    def reason(self, tools: list[dict], message: dict) -> str | None:
        """None when accepted, else why not."""
        from gemma_tool_use.format.render import render_assistant_text
        from gemma_tool_use.generation.tool_grammar import tool_grammar

        grammar = tool_grammar(tools)
        text = render_assistant_text(message)
        try:
            if self.accepts(grammar, text):
                return None
        except ValueError:
            return "grammar does not compile"
        ordered = {**message, "tool_calls": [_schema_order(c, tools) for c in message.get("tool_calls") or []]}
        if self.accepts(grammar, render_assistant_text(ordered)):
            return "argument keys not in schema order"
        if "<\\/" in text and self.accepts(grammar, text.replace("<\\/", "</")):
            return "'</' written '<\\/'"
        return _schema_violation(tools, message) or "other"


def _schema_order(call: dict, tools: list[dict]) -> dict:
    props = next((t.get("parameters") or {} for t in tools if t["name"] == call["name"]), {}).get("properties") or {}
    args = call.get("args") or {}
    order = [k for k in props if k in args] + [k for k in args if k not in props]
    return {**call, "args": {k: args[k] for k in order}}


def _schema_violation(tools: list[dict], message: dict) -> str | None:
    import jsonschema

    from gemma_tool_use.generation.tool_grammar import strict_schema

    for call in message.get("tool_calls") or []:
        tool = next((t for t in tools if t["name"] == call["name"]), None)
        if tool is None:
            return "calls a tool not offered"
        params = strict_schema(tool.get("parameters") or {"type": "object", "properties": {}})
        try:
            jsonschema.validate(call.get("args") or {}, params, format_checker=jsonschema.FormatChecker())
        except jsonschema.ValidationError as e:
            return f"schema: {e.validator} ({e.message[:80]})"
        except jsonschema.SchemaError:
            return "schema: the tool's schema is not valid JSON Schema"
    return None


def measure_mix(checker, stage: str) -> dict:
    from hydra import compose, initialize_config_dir

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.data.mix import build_mix
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=RECIPE[stage])
    train, val, _ = build_mix(cfg.data, int(cfg.seed))
    out = {}
    for split, rows in (("train", train), ("val", val)):
        out[split] = _count(checker, ((r["tools"], m, r["meta"].get("source")) for r in rows for m in _turns(r)))
    return out


def _turns(row):
    return [m for m in row["messages"] if m["role"] == "assistant"] if row.get("tools") else []


def _count(checker, items) -> dict:
    turns, accepted, reasons, examples = 0, 0, collections.Counter(), {}
    by_source = collections.defaultdict(collections.Counter)
    for tools, message, source in items:
        turns += 1
        why = checker.reason(tools, message)
        if why is None:
            accepted += 1
            continue
        reasons[why] += 1
        by_source[source][why] += 1
        if why not in examples:
            from gemma_tool_use.format.render import render_assistant_text

            examples[why] = {"source": source, "text": render_assistant_text(message)[:400]}
    return {
        "turns": turns,
        "accepted": accepted,
        "refused": dict(reasons.most_common()),
        "refused_by_source": {k: dict(v) for k, v in by_source.items()},
        "examples": examples,
    }


def bfcl_gold_turns(category: str):
    """(tools, assistant message, category) of each entry's ground truth: the first allowed value
    of every argument, optional ones ("" among the values) left out, in the answer's order."""
    from gemma_tool_use.evaluation import bfcl

    answers = bfcl.load_answers(category)
    # the docs the model (and so the grammar) sees: BFCL's hints rewrite Java/JavaScript types as strings
    for entry in bfcl.load_entries(category, hints=True):
        calls = []
        for gold in answers[entry["id"]]:
            ((name, params),) = gold.items()
            args = {k: v[0] for k, v in params.items() if v and v[0] != ""}
            calls.append({"name": name, "args": args})
        yield (
            bfcl.bfcl_tools(entry.get("function", [])),
            {"role": "assistant", "content": "", "tool_calls": calls},
            category,
        )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", default="sft_small,sft_full")
    ap.add_argument("--categories", default=",".join(DEFAULT_CATEGORIES))
    args = ap.parse_args()
    from gemma_tool_use.model.tokenizer import load_tokenizer

    checker = Checker(load_tokenizer())
    result = {"training_mixes": {}, "bfcl_ground_truth": {}}
    for stage in [s for s in args.stages.split(",") if s]:
        result["training_mixes"][stage] = measure_mix(checker, stage)
        print(stage, {k: (v["accepted"], v["turns"], v["refused"]) for k, v in result["training_mixes"][stage].items()})
    for category in [c for c in args.categories.split(",") if c]:
        result["bfcl_ground_truth"][category] = _count(checker, bfcl_gold_turns(category))
        r = result["bfcl_ground_truth"][category]
        print(category, r["accepted"], r["turns"], r["refused"])
    result["grammar_warnings"] = dict(checker.grammars.warnings)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
