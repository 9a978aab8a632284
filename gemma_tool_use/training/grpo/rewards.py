"""Stage 5 (GRPO) rewards: plain functions, each logged on its own, weighted by the caller.

Every reward has the TRL / tunix signature `fn(prompts, completions, **columns) -> list[float]`,
one float per completion. `completions` are the raw model texts (the stop token not included);
the columns are lists aligned with them:

* `tools`        - the tool schemas offered in that prompt ({"name", "description", "parameters"}),
* `gold_calls`   - [{"name", "args"}]; an empty list means "no offered tool fits: do not call",
* `stop_reasons` - "stop" (the model ended its turn) or "length" (cut at max_new_tokens).

Unknown columns are accepted and ignored. The terms (raw values; weights come from `reward.*`):

====================  ==========================================================================
format_reward         1.0 / 0.0: stopped by itself, parses without errors, nothing stray, and
                      of the right kind: a call where one is needed, none where none fits.
correctness_reward    [-1, 1]: ToolRL partial credit (arXiv 2504.13958), 0.0 on no-call rows.
abstention_reward     no-call rows: +1.0 plain-text answer, -1.0 any call; 0.0 on call rows.
call_count_reward     call rows: 1 - |n_pred - n_gold| / max(n_pred, n_gold); 0.0 on no-call rows.
exact_match_reward    1.0 / 0.0 (`reward.mode=binary`, Tool-N1 style): valid format and the calls
                      equal the gold calls as a multiset (no call for a no-call gold).
====================  ==========================================================================

Choices (documented here, pinned by tests/test_rewards.py):

* **Stray content** (format 0.0): free text outside the <tool_call> blocks in a turn that calls
  (or tries to call) a tool; any control string of the chat format in the free text
  (<tool_response>, <tools>, <start_of_turn>, <end_of_turn>, <bos>, <eos>, ...: the model
  inventing a tool result or a next turn); an empty turn (no call and no text: not an answer).
  A plain-text answer with no call is fine. Tags inside a JSON string argument are argument
  content, not stray. A trailing "<end_of_turn>"/"<eos>" left on the text is ignored.
* **No credit for the form of a wrong kind of answer**: on a no-call row a call (however tidy)
  gets format 0.0, and on a row that needs a call so does a plain-text answer. Crediting the
  call made the format term the only spread within a no-call group where every sample calls, so
  GRPO's advantage pushed towards tidier calls where no tool fits (the probe's abstention
  turned negative within a few steps; measured: experiments/grpo_from_sft_short/README.md);
  crediting the text made "answer in text" (format 1, correctness -1: total 0) beat a malformed
  call (-1), so the policy stopped calling where it should (run r2: the call rate where a call
  is needed collapsed while abstention rose; measured: experiments/grpo_from_sft_short_r3/README.md).
* **Parse errors**: every error kind of `chat_format.parse_model_output` zeroes the format term,
  unknown_tool included (calling a tool that was not offered is malformed output), and
  duplicate_key (a repeated argument key: the curve's models folded two calls into one that way,
  {"a": 3, "b": 4, "a": 5, "b": 12}, on 9 of 50 BFCL parallel entries at step 800, a miss BFCL
  counts as a wrong call count), except bad_tools, which is the caller's malformed tool list,
  not the model's fault.
* **Correctness** scores the calls that did parse, whatever the format (truncated output, a bad
  block beside good ones): the format term carries the penalty, correctness the content.
  A call to a tool that was not offered never matches a gold call (a wrong name), even when
  the gold call has that name.
* **Matching** of gold calls to predictions is one-to-one and order-free, and only between
  calls of the same name (names are what the name term scores); within each name the assignment
  maximising S is found by brute force over the injective assignments (exact), falling back to
  greedy-by-score only past 5,040 assignments (7!; e.g. many duplicate calls), which bounds the
  time one completion's reward can take (measured: experiments/grpo_from_sft_short_r3/README.md).
* **Value equality** follows BFCL's AST checker: strings through BFCL's `standardize_string`
  (drop ' ' and the characters ,./-_*^, lowercase, ' -> "; re-implemented with its exact regex,
  because importing bfcl_eval's checker costs seconds; a test pins the regex against the
  installed bfcl_eval source), an int may stand for an equal float (BFCL converts an int given
  for a float parameter) but a float never for an int (BFCL's type check rejects 20.0 for an
  integer parameter: with the two symmetric, GRPO drifted ints into floats unpunished and lost
  simple_python entries, experiments/pipeline_cpu), bools only equal bools (True is not 1), lists element-wise in order (same length),
  dicts key-wise (same keys, values by the same rules), None only None.
* **Abstention** only asks whether a call was made: a truncated plain-text answer on a no-call
  row still scores +1.0 there (the format term takes the truncation).
* **made_call** means a parsed call or an attempted one (any <tool_call> / </tool_call> tag,
  even when the block does not parse): a broken call on a no-call row is still a call.
* **call_count** applies to every row with a gold call, single calls included (it penalises
  duplicate calls there); 0.0 on no-call rows (abstention scores those).
* **binary mode** returns exact_match at weight 1.0 and the four partial terms at weight 0.0
  (logged for comparison with partial-mode runs, no effect on the total). format_weight is
  ignored there: exact_match already demands valid format, and a second term would break the
  binary reward the ablation is about. Partial mode likewise logs exact_match at weight 0.0.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any, Callable, Sequence

from gemma_tool_use.format.parse import BAD_TOOLS, ParseResult, parse_model_output
from gemma_tool_use.format.render import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    TOOLS_CLOSE,
    TOOLS_OPEN,
)

RewardFn = Callable[..., list[float]]

# Control strings of the chat format that must not appear in a model turn's free text.
STRAY_MARKERS = (
    TOOL_RESPONSE_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOLS_OPEN,
    TOOLS_CLOSE,
    "<start_of_turn>",
    "<end_of_turn>",
    "<bos>",
    "<eos>",
    "<pad>",
)
_STOP_SUFFIXES = ("<end_of_turn>", "<eos>")
# Error kinds that are not the model's doing (the caller's tool list is malformed).
_NOT_MODEL_ERRORS = frozenset({BAD_TOOLS})
_MAX_ASSIGNMENTS = 5040  # 7!: exact brute-force matching up to this many assignments per name

# bfcl_eval/eval_checker/ast_eval/ast_checker.py, standardize_string (regex copied verbatim).
BFCL_STANDARDIZE_REGEX = r"[ \,\.\/\-\_\*\^]"
_BFCL_STANDARDIZE = re.compile(BFCL_STANDARDIZE_REGEX)


# ------------------------------------------------------------------------------- normalisation


def standardize_string(s: str) -> str:
    """BFCL's string normalisation: drop spaces and ,./-_*^, lowercase, single -> double quotes."""
    return _BFCL_STANDARDIZE.sub("", s).lower().replace("'", '"')


def values_match(gold: Any, pred: Any) -> bool:
    """Whether a predicted argument value equals the gold one, compared as BFCL compares them."""
    if isinstance(gold, bool) or isinstance(pred, bool):
        return isinstance(gold, bool) and isinstance(pred, bool) and gold == pred
    if isinstance(gold, (int, float)) and isinstance(pred, (int, float)):
        if isinstance(gold, int) and isinstance(pred, float):
            return False  # a float for an integer is a type error in BFCL's checker
        return gold == pred  # an int for a float: 1.0 == 1, and big ints are not rounded
    if isinstance(gold, str) and isinstance(pred, str):
        return standardize_string(gold) == standardize_string(pred)
    if isinstance(gold, (list, tuple)) and isinstance(pred, (list, tuple)):
        return len(gold) == len(pred) and all(values_match(g, p) for g, p in zip(gold, pred))
    if isinstance(gold, Mapping) and isinstance(pred, Mapping):
        return set(gold) == set(pred) and all(values_match(gold[k], pred[k]) for k in gold)
    if gold is None or pred is None:
        return gold is None and pred is None
    return type(gold) is type(pred) and gold == pred


def _jaccard(a: Counter, b: Counter) -> float:
    """|A ∩ B| / |A ∪ B| on multisets (min / max counts); 1.0 when both are empty."""
    union = sum((a | b).values())
    return 1.0 if union == 0 else sum((a & b).values()) / union


# ------------------------------------------------------------------------------- parsing


def _as_text(completion: Any) -> str:
    """The model text of a completion: a string, or a chat message / message list (TRL style)."""
    if isinstance(completion, Mapping):
        completion = completion.get("content", "")
    elif isinstance(completion, (list, tuple)):
        completion = completion[-1].get("content", "") if completion and isinstance(completion[-1], Mapping) else ""
    return completion if isinstance(completion, str) else str(completion)


def _strip_stop(text: str) -> str:
    """The text without trailing whitespace and stop strings (free text is stripped anyway)."""
    text = text.rstrip()
    while text.endswith(_STOP_SUFFIXES):
        text = text[: -len(next(s for s in _STOP_SUFFIXES if text.endswith(s)))].rstrip()
    return text


def _tool_names(tools: Any) -> tuple[str, ...] | None:
    if tools is None:
        return None
    try:
        return tuple(
            t["name"] for t in tools if isinstance(t, Mapping) and isinstance(t.get("name"), str) and t["name"]
        )
    except TypeError:
        return ()


@functools.lru_cache(maxsize=4096)
def _parse_cached(text: str, names: tuple[str, ...] | None) -> ParseResult:
    return parse_model_output(text, None if names is None else [{"name": n} for n in names])


def parse_one(completion: Any, tools: Any) -> ParseResult:
    """parse_model_output on the completion's text (trailing stop strings dropped), cached on
    (text, offered tool names). The result is shared between callers: do not mutate it."""
    return _parse_cached(_strip_stop(_as_text(completion)), _tool_names(tools))


def parse_completions(completions: Sequence[Any], tools: Sequence[Any]) -> list[ParseResult]:
    """One ParseResult per completion (`tools` aligned with `completions`), cached so the reward
    terms of one step parse each text once."""
    return [parse_one(c, t) for c, t in zip(completions, tools, strict=True)]


def _model_errors(parsed: ParseResult) -> list[str]:
    return [k for k in parsed.error_kinds if k not in _NOT_MODEL_ERRORS]


def made_call(completion: Any, tools: Any = None) -> bool:
    """Whether the completion calls a tool: a parsed call, or an attempted one (a tool-call tag
    whose block does not parse)."""
    text = _as_text(completion)
    return bool(parse_one(completion, tools).calls) or TOOL_CALL_OPEN in text or TOOL_CALL_CLOSE in text


def format_ok(completion: Any, tools: Any, stop_reason: str | None = "stop") -> bool:
    """The format term as a bool (see the module doc); stop_reason None skips the stop check."""
    if stop_reason is not None and stop_reason != "stop":
        return False
    parsed = parse_one(completion, tools)
    if _model_errors(parsed):
        return False
    if any(m in parsed.text for m in STRAY_MARKERS):
        return False
    if made_call(completion, tools):
        return not parsed.text  # calls only: any free text beside them is stray
    return bool(parsed.text)  # a plain-text answer; an empty turn is no answer


# ------------------------------------------------------------------------------- scoring


def _gold_args(call: Mapping) -> dict:
    args = call.get("args", call.get("arguments", {}))
    return dict(args) if isinstance(args, Mapping) else {}


def _pair_score(gold_args: dict, pred_args: dict) -> float:
    """m(gold keys, predicted keys) + number of gold keys whose value matches."""
    keys = _jaccard(Counter(gold_args.keys()), Counter(pred_args.keys()))
    return keys + sum(1 for k, v in gold_args.items() if k in pred_args and values_match(v, pred_args[k]))


def _best_assignment(scores: list[list[float]]) -> float:
    """Maximum total score of a one-to-one assignment of rows (gold) to columns (predictions):
    exact by brute force up to _MAX_ASSIGNMENTS assignments, greedy-by-score beyond."""
    n_gold, n_pred = len(scores), len(scores[0]) if scores else 0
    k = min(n_gold, n_pred)
    if k == 0:
        return 0.0
    if math.perm(max(n_gold, n_pred), k) <= _MAX_ASSIGNMENTS:
        if n_pred >= n_gold:
            return max(
                sum(scores[g][p] for g, p in enumerate(cols)) for cols in itertools.permutations(range(n_pred), k)
            )
        return max(sum(scores[g][p] for p, g in enumerate(rows)) for rows in itertools.permutations(range(n_gold), k))
    pairs = sorted(
        ((scores[g][p], g, p) for g in range(n_gold) for p in range(n_pred)), key=lambda x: (-x[0], x[1], x[2])
    )
    used_g, used_p, total = set(), set(), 0.0
    for s, g, p in pairs:
        if g not in used_g and p not in used_p:
            used_g.add(g), used_p.add(p)
            total += s
    return total


def _known_calls(parsed: ParseResult, tools: Any) -> tuple[list[dict], int]:
    """(the parsed calls to offered tools, the number of calls to tools not offered)."""
    names = _tool_names(tools)
    if not names:  # no list to check against
        return list(parsed.calls), 0
    known = [c for c in parsed.calls if c["name"] in names]
    return known, len(parsed.calls) - len(known)


def correctness_score(completion: Any, tools: Any, gold_calls: Sequence[Mapping]) -> tuple[float, float]:
    """(S, S_max) of ToolRL's partial credit; (0, 0) for a no-call gold."""
    if not gold_calls:
        return 0.0, 0.0
    parsed = parse_one(completion, tools)
    preds, n_unknown = _known_calls(parsed, tools)
    gold = [(str(g["name"]), _gold_args(g)) for g in gold_calls]
    gold_names = Counter(n for n, _ in gold)
    pred_names = Counter(c["name"] for c in preds)
    pred_names[None] += n_unknown  # an unknown tool is a wrong name: it only grows the union
    s = _jaccard(gold_names, pred_names)
    for name in gold_names:
        g_args = [a for n, a in gold if n == name]
        p_args = [c["args"] for c in preds if c["name"] == name]
        if p_args:
            s += _best_assignment([[_pair_score(g, p) for p in p_args] for g in g_args])
    s_max = 1.0 + sum(1.0 + len(a) for _, a in gold)
    return s, s_max


def exact_match(completion: Any, tools: Any, gold_calls: Sequence[Mapping], stop_reason: str | None = None) -> bool:
    """Valid format and the predicted calls equal the gold calls as a multiset of (name, args),
    values compared as BFCL does; for a no-call gold, no call. stop_reason None (the default, for
    the probe set) skips the stop check; pass it to count truncated output as a miss."""
    if not format_ok(completion, tools, stop_reason):
        return False
    parsed = parse_one(completion, tools)
    if not gold_calls:
        return not made_call(completion, tools)
    if len(parsed.calls) != len(gold_calls):
        return False
    unused = list(parsed.calls)
    for g in gold_calls:  # equality under normalisation is an equivalence, so greedy is exact
        g_name, g_args = str(g["name"]), _gold_args(g)
        hit = next((i for i, c in enumerate(unused) if c["name"] == g_name and values_match(g_args, c["args"])), None)
        if hit is None:
            return False
        unused.pop(hit)
    return True


# ------------------------------------------------------------------------------- reward functions


def _columns(completions, tools, gold_calls, stop_reasons):
    n = len(completions)
    if tools is None or gold_calls is None:
        raise ValueError("rewards need the 'tools' and 'gold_calls' columns")
    if stop_reasons is None:
        stop_reasons = ["stop"] * n
    if not (len(tools) == len(gold_calls) == len(stop_reasons) == n):
        raise ValueError(
            f"columns not aligned with {n} completions: tools {len(tools)}, "
            f"gold_calls {len(gold_calls)}, stop_reasons {len(stop_reasons)}"
        )
    return zip(completions, tools, gold_calls, stop_reasons)


def format_reward(prompts, completions, tools=None, gold_calls=None, stop_reasons=None, **_) -> list[float]:
    """1.0 when the output stopped by itself, parses with no errors, carries nothing stray and is
    of the right kind (a call where the gold has one, none where it has none: "No credit" in the
    module doc)."""
    return [
        float(format_ok(c, t, s) and bool(g) == made_call(c, t))
        for c, t, g, s in _columns(completions, tools, gold_calls, stop_reasons)
    ]


def correctness_reward(prompts, completions, tools=None, gold_calls=None, stop_reasons=None, **_) -> list[float]:
    """ToolRL partial credit 2*S/S_max - 1 in [-1, 1]; 0.0 on no-call rows."""
    out = []
    for c, t, g, _s in _columns(completions, tools, gold_calls, stop_reasons):
        s, s_max = correctness_score(c, t, g)
        out.append(2.0 * s / s_max - 1.0 if s_max else 0.0)
    return out


def abstention_reward(prompts, completions, tools=None, gold_calls=None, stop_reasons=None, **_) -> list[float]:
    """No-call rows: +1.0 for a plain-text answer that parses, -1.0 for any (attempted) call,
    0.0 otherwise (an empty turn, unparseable text); 0.0 on rows that need a call."""
    out = []
    for c, t, g, _s in _columns(completions, tools, gold_calls, stop_reasons):
        if g:
            out.append(0.0)
        elif made_call(c, t):
            out.append(-1.0)
        else:
            parsed = parse_one(c, t)
            out.append(1.0 if parsed.text and not _model_errors(parsed) else 0.0)
    return out


def call_count_reward(prompts, completions, tools=None, gold_calls=None, stop_reasons=None, **_) -> list[float]:
    """Rows with gold calls: 1 - |n_pred - n_gold| / max(n_pred, n_gold) (parsed calls); 0.0 on no-call rows."""
    out = []
    for c, t, g, _s in _columns(completions, tools, gold_calls, stop_reasons):
        if not g:
            out.append(0.0)
            continue
        n_pred, n_gold = len(parse_one(c, t).calls), len(g)
        out.append(1.0 - abs(n_pred - n_gold) / max(n_pred, n_gold))
    return out


def exact_match_reward(prompts, completions, tools=None, gold_calls=None, stop_reasons=None, **_) -> list[float]:
    """1.0 when the format is valid (stopped included) and the calls equal the gold calls."""
    return [float(exact_match(c, t, g, s)) for c, t, g, s in _columns(completions, tools, gold_calls, stop_reasons)]


REWARD_FNS: dict[str, RewardFn] = {
    "format": format_reward,
    "correctness": correctness_reward,
    "abstention": abstention_reward,
    "call_count": call_count_reward,
    "exact_match": exact_match_reward,
}


def build_reward_fns(reward_cfg) -> list[tuple[str, float, RewardFn]]:
    """(name, weight, fn) for `reward.mode`. partial: format, correctness, abstention, call_count
    at their configured weights (+ exact_match at 0.0, logged only); binary: exact_match at 1.0
    (+ the four partial terms at 0.0, logged only; format_weight is not used)."""
    mode = getattr(reward_cfg, "mode", "partial")
    partial = ["format", "correctness", "abstention", "call_count"]
    if mode == "partial":
        fns = [(n, float(getattr(reward_cfg, f"{n}_weight")), REWARD_FNS[n]) for n in partial]
        return fns + [("exact_match", 0.0, exact_match_reward)]
    if mode == "binary":
        return [("exact_match", 1.0, exact_match_reward)] + [(n, 0.0, REWARD_FNS[n]) for n in partial]
    raise ValueError(f"reward.mode must be 'partial' or 'binary', got {mode!r}")


__all__ = [
    "BFCL_STANDARDIZE_REGEX",
    "REWARD_FNS",
    "STRAY_MARKERS",
    "abstention_reward",
    "build_reward_fns",
    "call_count_reward",
    "correctness_reward",
    "correctness_score",
    "exact_match",
    "exact_match_reward",
    "format_ok",
    "format_reward",
    "made_call",
    "parse_completions",
    "parse_one",
    "standardize_string",
    "values_match",
]
