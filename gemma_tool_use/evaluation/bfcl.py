"""BFCL glue: bfcl-eval's data and checkers, our prompt format and parser. No scoring logic here.

* Entries come from `bfcl_eval.utils.load_dataset_entry` with BFCL's language-specific hints
  (Python 3 note, Java/JavaScript typing); function docs are cast to JSON Schema with BFCL's
  own `_cast_to_openai_type` (as its function-calling handlers do), names kept as they are.
* `GemmaToolUseHandler` is a bfcl-eval model handler whose `decode_ast` / `decode_execute`
  turn our `<tool_call>` text into BFCL's decoded structures. Verdicts come from bfcl-eval's
  per-entry evaluators (`ast_checker` behind them), and the same handler lets anyone re-score
  our per-entry files with `bfcl_eval.eval_checker.eval_runner.evaluate_task`.
* Aggregates use bfcl-eval's `calculate_weighted_accuracy` / `calculate_unweighted_accuracy`.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

from gemma_tool_use.format.parse import DUPLICATE_KEY, parse_model_output
from gemma_tool_use.utils.errors import UserError

# bfcl-eval writes into its project root unless told otherwise; keep it out of site-packages.
os.environ.setdefault("BFCL_PROJECT_ROOT", str(Path(tempfile.gettempdir()) / "gemma_tool_use_bfcl"))

MODEL_NAME = "gemma-tool-use"  # no '_': bfcl maps '_' in model names back to '/'

NON_LIVE_AST = ("simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple")
LIVE_AST = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
RELEVANCE = ("irrelevance", "live_irrelevance", "live_relevance")
MULTI_TURN = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
# BFCL v4's aggregates and the categories each is computed from (aggregate() below).
AGGREGATE_PARTS = {
    "non_live": NON_LIVE_AST,
    "simple": NON_LIVE_AST[:3],
    "live": LIVE_AST,
    "irrelevance": ("irrelevance", "live_irrelevance"),
    "multi_turn": MULTI_TURN,
}
AGGREGATE_PARTS["overall_agentic_not_run"] = tuple(c for v in AGGREGATE_PARTS.values() for c in v)
NOT_RUN = {
    "web_search": "needs internet access",
    "memory": "needs hub-hosted embedding models",
    "web_search_base": "needs internet access",
    "web_search_no_snippet": "needs internet access",
    "memory_kv": "needs hub-hosted embedding models",
    "memory_vector": "needs hub-hosted embedding models",
    "memory_rec_sum": "needs hub-hosted embedding models",
}
SINGLE_TURN = NON_LIVE_AST + LIVE_AST + RELEVANCE
DEFAULT_CATEGORIES = NON_LIVE_AST + ("irrelevance",)


class BfclError(UserError, ValueError):
    pass


class DecodeError(ValueError):
    """Raised to bfcl-eval when the model text holds a malformed call (BFCL: 'failed to decode')."""


def _calls_or_raise(text: str) -> list[dict]:
    parsed = parse_model_output(text)
    # a repeated key keeps its last value, as a json.loads decode would: not a decode failure
    errors = [e for e in parsed.errors if e.kind != DUPLICATE_KEY]
    if errors:
        raise DecodeError("; ".join(f"{e.kind}: {e.detail}" for e in errors))
    return [{c["name"]: c["args"]} for c in parsed.calls]


def _handler_class():
    from bfcl_eval.model_handler.base_handler import BaseHandler
    from bfcl_eval.model_handler.utils import convert_to_function_call

    class GemmaToolUseHandler(BaseHandler):
        """Decoding only: generation happens in gemma_tool_use, scoring in bfcl-eval."""

        def decode_ast(self, result, language=None, has_tool_call_tag=False):
            return _calls_or_raise(result)

        def decode_execute(self, result, has_tool_call_tag=False):
            return convert_to_function_call(_calls_or_raise(result))

    return GemmaToolUseHandler


_HANDLER = None


def handler():
    """The registered bfcl-eval handler (registration is idempotent)."""
    global _HANDLER
    if _HANDLER is None:
        from bfcl_eval.constants.model_config import MODEL_CONFIG_MAPPING, ModelConfig

        cls = _handler_class()
        MODEL_CONFIG_MAPPING.setdefault(
            MODEL_NAME,
            ModelConfig(
                model_name=MODEL_NAME,
                display_name="Gemma 3 270M (gemma_tool_use)",
                url="",
                org="gemma_tool_use",
                license="gemma",
                model_handler=cls,
                is_fc_model=True,
                underscore_to_dot=False,
            ),
        )
        _HANDLER = cls(model_name=MODEL_NAME, temperature=0.0, registry_name=MODEL_NAME, is_fc_model=True)
    return _HANDLER


def check_categories(categories) -> list[str]:
    known = set(SINGLE_TURN) | set(MULTI_TURN)
    out = []
    for c in categories:
        if c in NOT_RUN:
            continue
        if c not in known:
            raise BfclError(f"eval.categories: unknown BFCL category {c!r} (known: {', '.join(sorted(known))})")
        out.append(c)
    return out


def load_entries(category: str, *, hints: bool = True) -> list[dict]:
    """hints=True: what the model sees (BFCL's Python 3 note, Java/JavaScript types rewritten
    as strings with a hint). hints=False: the original docs, which BFCL's checker needs
    (its Java/JS type conversion reads the original type names)."""
    from bfcl_eval.utils import load_dataset_entry

    return load_dataset_entry(category, include_prereq=False, include_language_specific_hint=hints)


def load_answers(category: str) -> dict[str, list]:
    from bfcl_eval.utils import load_ground_truth_entry

    if category in RELEVANCE:
        return {}
    return {a["id"]: a["ground_truth"] for a in load_ground_truth_entry(category)}


def bfcl_tools(functions: list[dict]) -> list[dict]:
    """BFCL function docs -> our tool list, with BFCL's own type casting."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.model_handler.utils import _cast_to_openai_type

    tools = []
    for f in copy.deepcopy(functions):
        params = f.get("parameters") or {"type": "dict", "properties": {}}
        params["type"] = "object"
        params["properties"] = _cast_to_openai_type(params.get("properties", {}), GORILLA_TO_OPENAPI)
        tools.append({"name": f["name"], "description": f.get("description", ""), "parameters": params})
    return tools


def entry_conversation(entry: dict) -> dict:
    """A single-turn BFCL entry as our canonical conversation (the model answers next)."""
    turns = entry["question"]
    messages = [{"role": m["role"], "content": m["content"]} for turn in turns for m in turn]
    return {"tools": bfcl_tools(entry.get("function", [])), "messages": messages}


def language_of(category: str):
    from bfcl_eval.constants.enums import Language, ReturnFormat

    if category == "simple_java":
        return Language.JAVA, ReturnFormat.JAVA
    if category == "simple_javascript":
        return Language.JAVASCRIPT, ReturnFormat.JAVASCRIPT
    return Language.PYTHON, ReturnFormat.PYTHON


def score_entry(category: str, entry: dict, raw_text: str, answer) -> dict:
    """bfcl-eval's own verdict for one single-turn entry: {"valid", "error_type", "error"}.
    `entry` must be loaded with hints=False, as bfcl-eval's own evaluation loads it."""
    from bfcl_eval.eval_checker import eval_runner

    h = handler()
    if category in RELEVANCE:
        out = eval_runner._evaluate_single_relevance_entry(h, entry["id"], raw_text, entry, MODEL_NAME, category)
    else:
        language, fmt = language_of(category)
        out = eval_runner._evaluate_single_ast_entry(
            h,
            entry["id"],
            raw_text,
            answer,
            entry,
            MODEL_NAME,
            category,
            language=language,
            return_format=fmt,
            has_tool_call_tag=False,
        )
    error = out.get("error")
    if isinstance(error, dict):
        error = error.get("error_message")
    return {
        "valid": bool(out["valid"]),
        "error_type": out.get("error_type"),
        "error": error if error is None or isinstance(error, (list, str)) else str(error),
    }


# ------------------------------------------------------------------------------ aggregates


def aggregate(per_category: dict[str, dict]) -> dict:
    """BFCL v4 aggregates from {category: {"accuracy", "total_count"}}; an aggregate whose
    categories did not all run is null and lists what is missing."""
    from bfcl_eval.eval_checker.eval_runner_helper import (
        calculate_unweighted_accuracy,
        calculate_weighted_accuracy,
    )

    def acc(cats):
        missing = [c for c in cats if c not in per_category]
        if missing:
            return None, missing
        return [dict(per_category[c], display_accuracy=per_category[c]["accuracy"]) for c in cats], []

    out: dict = {"missing": {}}

    def put(name, value, missing):
        out[name] = value
        if missing:
            out["missing"][name] = missing

    simple, miss = acc(AGGREGATE_PARTS["simple"])
    rest, miss2 = acc(NON_LIVE_AST[3:])
    if simple is not None and rest is not None:
        simple_acc = calculate_unweighted_accuracy(simple)
        put("non_live", calculate_unweighted_accuracy([simple_acc] + rest)["accuracy"], [])
        out["simple"] = simple_acc["accuracy"]
    else:
        put("non_live", None, miss + miss2)
    live, miss = acc(AGGREGATE_PARTS["live"])
    put("live", calculate_weighted_accuracy(live)["accuracy"] if live else None, miss)
    irr, miss = acc(AGGREGATE_PARTS["irrelevance"])
    put("irrelevance", calculate_unweighted_accuracy(irr)["accuracy"] if irr else None, miss)
    mt, miss = acc(AGGREGATE_PARTS["multi_turn"])
    put("multi_turn", calculate_unweighted_accuracy(mt)["accuracy"] if mt else None, miss)
    parts = [out["non_live"], out["live"], out["irrelevance"], out["multi_turn"]]
    if all(p is not None for p in parts):
        # BFCL v4 overall = 10% non-live + 10% live + 10% irrelevance + 30% multi-turn + 40% agentic.
        out["overall_agentic_not_run"] = 0.1 * parts[0] + 0.1 * parts[1] + 0.1 * parts[2] + 0.3 * parts[3]
    else:
        out["overall_agentic_not_run"] = None
    out["agentic_run"] = False
    return out


def aggregate_caveats(caveats: dict[str, str]) -> dict[str, str]:
    """aggregate -> why its value is not clean: an aggregate of any category that is not
    (`caveats`: category -> why, adapters.score_caveats)."""
    return {
        agg: why
        for agg, parts in AGGREGATE_PARTS.items()
        if (why := next((caveats[c] for c in parts if c in caveats), None)) is not None
    }


# Published BFCL v4 numbers (leaderboard 2025-12-16, FC mode unless noted; FunctionGemma from its
# model card, custom prompt), as collected in FIELD_NOTES; percentages.
PUBLISHED_ANCHORS = {
    "Qwen3-0.6B": {
        "non_live": 71.79,
        "simple_python": 86.50,
        "multiple": 86.0,
        "parallel": 67.5,
        "parallel_multiple": 69.5,
        "live": 56.62,
        "irrelevance": 82.5,
        "live_irrelevance": 79.2,
    },
    "Granite-4.0-350m": {
        "non_live": 67.92,
        "simple_python": 83.00,
        "multiple": 84.5,
        "parallel": 70.0,
        "parallel_multiple": 55.5,
        "live": 46.11,
        "irrelevance": 76.7,
        "live_irrelevance": 45.0,
    },
    "Hammer2.1-0.5b": {
        "non_live": 65.98,
        "simple_python": 83.25,
        "multiple": 81.0,
        "parallel": 69.0,
        "parallel_multiple": 51.5,
        "live": 54.63,
        "irrelevance": 85.0,
        "live_irrelevance": 76.6,
    },
    "Llama-3.2-1B": {
        "non_live": 38.38,
        "simple_python": 75.00,
        "multiple": 50.5,
        "parallel": 44.0,
        "parallel_multiple": 15.0,
        "live": 11.77,
        "irrelevance": 35.8,
        "live_irrelevance": 67.3,
    },
    "Gemma-3-1b-it (prompt)": {
        "non_live": 20.21,
        "simple_python": 64.00,
        "multiple": 36.0,
        "parallel": 0.0,
        "parallel_multiple": 1.5,
        "live": 11.84,
        "irrelevance": 7.1,
        "live_irrelevance": 59.3,
    },
    "FunctionGemma-270M (card)": {
        "multiple": 63.5,
        "parallel": 39.0,
        "parallel_multiple": 29.5,
        "live_simple": 36.2,
        "live_multiple": 25.7,
        "live_parallel": 22.9,
        "live_parallel_multiple": 20.8,
        "live_relevance": 61.1,
        "irrelevance": 73.7,
    },
}
