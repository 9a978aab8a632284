"""Training-row augmentations. Each is a pure function of (row(s), rng) and keeps the row valid;
`augment_rows` applies them with configured ratios, deterministically for a given seed.

  irrelevance     remove every called tool: the answer becomes the plain-text REFUSAL
  near_miss       replace the called tools by same-domain pool tools that do something else
                  (BFCL's irrelevance offers such tools: a BMI tool for a triangle's area);
                  the answer is the REFUSAL
  distractors     add tools from other rows (no name clashes) and shuffle the tool order
  mask_names      Hammer-style: random function and parameter names, consistently in the
                  tool list and the calls, so the model reads descriptions, not names
  join_parallel   two independent single-call requests joined into one parallel request
  join_same_tool  2-3 real requests that call the same tool, joined: as many calls of it
  procedural      rows generated from tool schemas alone (valid args drawn from the schema)
  procedural_parallel  one request for the same task 2-4 times: as many calls of one tool
  other_tools     a call row's request offered only another source's tools that share no
                  specific word with it (a request meeting an unrelated API, as in BFCL's
                  irrelevance and live_irrelevance): the answer is the REFUSAL
"""

from __future__ import annotations

import copy
import json
import random
import re
import string
from typing import Any

from gemma_tool_use.data.rows import REFUSAL, classify, validate_args  # noqa: F401 (re-exported)

JOINERS = (" Also, ", " And ", " Then, ", "\n", " Additionally, ")


def _tag(row: dict, how: str) -> dict:
    row["meta"] = {**row.get("meta", {}), "augmentation": how, "category": classify(row)}
    return row


def _single_turn_calls(row: dict) -> list[dict] | None:
    """The calls of a single-turn call row (user -> assistant with calls), else None."""
    msgs = [m for m in row["messages"] if m["role"] != "system"]
    if len(msgs) != 2 or msgs[0]["role"] != "user" or msgs[1]["role"] != "assistant":
        return None
    return msgs[1].get("tool_calls") or None


def make_irrelevant(row: dict, rng: random.Random) -> dict | None:
    called = {c["name"] for c in _single_turn_calls(row) or []}
    tools = [t for t in row["tools"] if t["name"] not in called]
    if not called or not tools:
        return None  # not a call row, or no tool would be left (an irrelevance row still offers some)
    out = copy.deepcopy(row)
    out["tools"] = tools
    out["messages"][-1] = {"role": "assistant", "content": REFUSAL}
    return _tag(out, "irrelevance")


# Name words that say what a tool does, not what about: sharing one of them does not make two
# tools alike ("calculate_bmi" vs "calculate_area"); sharing any other name word might.
_GENERIC_NAME_WORDS = frozenset(
    "get set calculate calc find search check create update delete list fetch generate retrieve analyze analyse "
    "compute convert track manage add remove send book plan predict estimate evaluate monitor validate query "
    "lookup info data details information the for and from with by api tool".split()
)
_STOP_WORDS = frozenset(
    "the a an of to for and or in on at by with from given into this that these those is are be it its as "
    "specified provided based using use user their your which what".split()
)


def _name_words(name: str) -> set[str]:
    split = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {w for w in re.findall(r"[a-z]+", split.lower()) if len(w) >= 3} - _GENERIC_NAME_WORDS


def _content_words(text: str) -> frozenset[str]:
    """Lowercase words of 3+ letters that are neither stop words nor generic name words."""
    words = re.findall(r"[a-z]+", text.lower())
    return frozenset(w for w in words if len(w) >= 3 and w not in _STOP_WORDS and w not in _GENERIC_NAME_WORDS)


def _tool_words(tool: dict) -> frozenset[str]:
    return _content_words(re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", f"{tool['name']} {tool.get('description') or ''}"))


class NearMissIndex:
    """Pool tools by content words, to find same-domain tools that do something else."""

    def __init__(self, pool: list[dict]):
        self.pool = pool
        self.words = [_tool_words(t) for t in pool]
        self.by_word: dict[str, list[int]] = {}
        for i, ws in enumerate(self.words):
            for w in ws:
                self.by_word.setdefault(w, []).append(i)

    def near_misses(
        self,
        tools: list[dict],
        exclude: set[str],
        k: int,
        rng: random.Random,
        max_similarity: float = 0.35,
        skip: int = 2,
    ) -> list[dict]:
        """Up to k pool tools that share description words with `tools` (same domain) but no
        specific name word, and are not near-copies (word Jaccard < max_similarity): tools that
        look relevant and cannot do what these tools do. Drawn from the 4k closest after the
        `skip` closest: those are the likeliest to fit the request after all (a false refusal)."""
        target = frozenset().union(*(_tool_words(t) for t in tools))
        names = set().union(*(_name_words(t["name"]) for t in tools))
        shared: dict[int, int] = {}
        for w in target:
            for i in self.by_word.get(w, ()):
                shared[i] = shared.get(i, 0) + 1
        scored = []
        for i, n in shared.items():
            t = self.pool[i]
            jaccard = n / len(target | self.words[i])
            if t["name"] in exclude or jaccard >= max_similarity or _name_words(t["name"]) & names:
                continue
            scored.append((-jaccard, t["name"], i))
        closest = [i for _, _, i in sorted(scored)[skip : skip + 4 * k]]
        return [copy.deepcopy(self.pool[i]) for i in rng.sample(closest, min(k, len(closest)))]


def make_near_miss(row: dict, index: NearMissIndex, rng: random.Random, k: int = 3) -> dict | None:
    """A call row whose called tools are replaced by near-miss pool tools: the answer is the REFUSAL."""
    called = {c["name"] for c in _single_turn_calls(row) or []}
    if not called:
        return None
    gold = [t for t in row["tools"] if t["name"] in called]
    near = index.near_misses(gold, exclude={t["name"] for t in row["tools"]}, k=rng.randint(1, k), rng=rng)
    if not near:
        return None
    out = copy.deepcopy(row)
    out["tools"] = [t for t in out["tools"] if t["name"] not in called] + near
    rng.shuffle(out["tools"])
    out["messages"][-1] = {"role": "assistant", "content": REFUSAL}
    return _tag(out, "near_miss")


def _request_words(row: dict) -> frozenset[str]:
    """Content words of the row's user turns and of the tools it calls: what its request is about."""
    called = {c["name"] for c in _single_turn_calls(row) or []}
    text = " ".join(m.get("content") or "" for m in row["messages"] if m["role"] == "user")
    return _content_words(text).union(*(_tool_words(t) for t in row["tools"] if t["name"] in called))


def _unrelated(tool: dict, about: frozenset[str], max_similarity: float) -> bool:
    words = _tool_words(tool)
    return not (_name_words(tool["name"]) & about) and len(words & about) < max_similarity * max(1, len(words))


def make_other_tools(
    row: dict, donors: list[dict], rng: random.Random, k: int = 4, max_similarity: float = 0.15
) -> dict | None:
    """A single-turn call row whose tools are all replaced by up to k tools of the first donor row
    (from another source) none of whose tools names a word of the request or of the called tools,
    or shares more than max_similarity of its content words with them; the answer is the REFUSAL.
    None when the row is not a call row or no donor qualifies."""
    if not _single_turn_calls(row):
        return None
    about, source = _request_words(row), row.get("meta", {}).get("source")
    names = {t["name"] for t in row["tools"]}
    for donor in donors:
        tools = donor.get("tools") or []
        if donor.get("meta", {}).get("source") == source or not tools or names & {t["name"] for t in tools}:
            continue
        if all(_unrelated(t, about, max_similarity) for t in tools):
            out = copy.deepcopy(row)
            out["tools"] = copy.deepcopy(rng.sample(tools, min(k, len(tools))))
            out["messages"][-1] = {"role": "assistant", "content": REFUSAL}
            return _tag(out, "other_tools")
    return None


def add_distractors(row: dict, pool: list[dict], rng: random.Random, k: int = 3) -> dict:
    out = copy.deepcopy(row)
    names = {t["name"] for t in out["tools"]}
    candidates = [t for t in pool if t["name"] not in names]
    extra = []
    for t in rng.sample(candidates, min(k, len(candidates))):
        if t["name"] not in names:
            names.add(t["name"])
            extra.append(copy.deepcopy(t))
    out["tools"] = out["tools"] + extra
    rng.shuffle(out["tools"])
    return _tag(out, "distractors")


def _random_name(rng: random.Random, prefix: str) -> str:
    return prefix + "_" + "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(6))


def mask_names(row: dict, rng: random.Random) -> dict | None:
    """Replace function names and parameter names by random identifiers everywhere."""
    if any(m["role"] == "tool" for m in row["messages"]):
        return None  # tool responses may mention names in free text: leave multi-turn rows alone
    out = copy.deepcopy(row)
    fn_map = {t["name"]: _random_name(rng, "func") for t in out["tools"]}
    param_maps = {}
    for t in out["tools"]:
        params = t.get("parameters") or {}
        pm = param_maps[t["name"]] = {p: _random_name(rng, "arg") for p in params.get("properties") or {}}
        if pm:
            params["properties"] = {pm[p]: v for p, v in params["properties"].items()}
        if params.get("required"):
            params["required"] = [pm.get(p, p) for p in params["required"]]
        t["name"] = fn_map[t["name"]]
    for m in out["messages"]:
        for c in m.get("tool_calls") or []:
            pm = param_maps.get(c["name"], {})
            c["args"] = {pm.get(k, k): v for k, v in c.get("args", {}).items()}
            c["name"] = fn_map.get(c["name"], c["name"])
    return _tag(out, "mask_names")


def join_parallel(a: dict, b: dict, rng: random.Random) -> dict | None:
    """Two single-turn call rows with disjoint tools -> one request with both sets of calls."""
    ca, cb = _single_turn_calls(a), _single_turn_calls(b)
    if not ca or not cb or {t["name"] for t in a["tools"]} & {t["name"] for t in b["tools"]}:
        return None
    qa = next(m for m in a["messages"] if m["role"] == "user")["content"].strip()
    qb = next(m for m in b["messages"] if m["role"] == "user")["content"].strip()
    tools = copy.deepcopy(a["tools"] + b["tools"])
    rng.shuffle(tools)
    out = {
        "tools": tools,
        "messages": [
            {"role": "user", "content": qa + rng.choice(JOINERS) + qb},
            {"role": "assistant", "content": "", "tool_calls": copy.deepcopy(ca + cb)},
        ],
        "meta": {
            "source": f"{a.get('meta', {}).get('source')}+{b.get('meta', {}).get('source')}",
            "row": f"{a.get('meta', {}).get('row')}+{b.get('meta', {}).get('row')}",
        },
    }
    return _tag(out, "join_parallel")


def join_same_tool(rows: list[dict], rng: random.Random) -> dict | None:
    """2-3 single-call requests that call one tool (the same schema in each row), joined into one
    request answered by as many calls of it, in order: BFCL's "parallel" with real wording."""
    calls = [_single_turn_calls(r) for r in rows]
    if any(c is None or len(c) != 1 for c in calls):
        return None
    name = calls[0][0]["name"]
    schemas = [next((t for t in r["tools"] if t["name"] == name), None) for r in rows]
    if any(c[0]["name"] != name for c in calls) or any(s != schemas[0] for s in schemas):
        return None
    if len({json.dumps(c[0]["args"], sort_keys=True) for c in calls}) < len(calls):
        return None  # the same call twice is not two requests
    queries = [next(m for m in r["messages"] if m["role"] == "user")["content"].strip() for r in rows]
    # SNIPS-like requests have no closing punctuation: end each one so the joined text reads as sentences
    queries = [q if q[-1:] in ".?!" else q + "." for q in queries]
    query = queries[0] + "".join(rng.choice(JOINERS) + q for q in queries[1:])
    tools, seen = [], set()
    for t in (t for r in rows for t in r["tools"]):
        if t["name"] not in seen:
            seen.add(t["name"])
            tools.append(copy.deepcopy(t))
    rng.shuffle(tools)
    out = {
        "tools": tools,
        "messages": [
            {"role": "user", "content": query},
            {"role": "assistant", "content": "", "tool_calls": [copy.deepcopy(c[0]) for c in calls]},
        ],
        "meta": {
            "source": rows[0].get("meta", {}).get("source"),
            "row": "+".join(str(r.get("meta", {}).get("row")) for r in rows),
        },
    }
    return _tag(out, "join_same_tool")


def _same_tool_groups(rows: list[dict], n: int, rng: random.Random) -> list[list[dict]]:
    """n groups of 2-3 single-call rows calling the same tool name: a name drawn in proportion to its
    rows (names with >= 2 rows), then its rows."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        if (c := _single_turn_calls(r)) and len(c) == 1:
            by_name.setdefault(c[0]["name"], []).append(r)
    names = sorted(k for k, v in by_name.items() if len(v) >= 2)
    if not names:
        return []
    weights = [len(by_name[k]) for k in names]
    return [
        rng.sample(by_name[k], min(len(by_name[k]), rng.choice((2, 2, 3)))) for k in rng.choices(names, weights, k=n)
    ]


# ------------------------------------------------------------------------------ procedural rows

_WORDS = ("alpha", "orbit", "harbor", "maple", "quartz", "delta", "violet", "summit", "cedar", "nova")


def sample_value(schema: dict, rng: random.Random, depth: int = 0) -> Any:
    """A value valid for a (simple) JSON Schema."""
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    typ = schema.get("type", "string")
    if isinstance(typ, list):
        typ = rng.choice([t for t in typ if t != "null"] or ["string"])
    if typ == "integer":
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(lo, max(lo, hi))
    if typ == "number":
        lo, hi = float(schema.get("minimum", 0)), float(schema.get("maximum", 1000))
        return round(rng.uniform(lo, max(lo, hi)), 2)
    if typ == "boolean":
        return rng.random() < 0.5
    if typ == "array":
        items = schema.get("items") or {"type": "string"}
        return [] if depth > 2 else [sample_value(items, rng, depth + 1) for _ in range(rng.randint(1, 3))]
    if typ == "object":
        props = schema.get("properties") or {}
        if depth > 2 or not props:
            return {}
        return {k: sample_value(v, rng, depth + 1) for k, v in props.items() if k in (schema.get("required") or props)}
    return rng.choice(_WORDS) + (str(rng.randint(1, 99)) if rng.random() < 0.3 else "")


def _procedural_args(tool: dict, rng: random.Random) -> tuple[dict, str] | None:
    """Schema-valid arguments for `tool` and how a request would spell them, or None."""
    params = tool.get("parameters") or {"type": "object", "properties": {}}
    props = params.get("properties") or {}
    required = params.get("required") or []
    chosen = [p for p in props if p in required or rng.random() < 0.4]
    args = {p: sample_value(props[p], rng) for p in chosen}
    if validate_args(args, params):
        return None
    details = ", ".join(
        f"{p.replace('_', ' ')} {repr(v) if isinstance(v, (dict, list)) else v}" for p, v in args.items()
    )
    return args, details


def _with_distractors(tool: dict, rng: random.Random, pool: list[dict] | None) -> list[dict]:
    tools = [copy.deepcopy(tool)]
    if pool:
        others = [t for t in pool if t["name"] != tool["name"]]
        tools += copy.deepcopy(rng.sample(others, min(len(others), rng.randint(0, 3))))
        rng.shuffle(tools)
    return tools


def _task_phrase(tool: dict) -> str:
    desc = (tool.get("description") or tool["name"]).strip().rstrip(".")
    return desc[0].lower() + desc[1:] if desc else tool["name"]


def procedural_row(tool: dict, rng: random.Random, pool: list[dict] | None = None) -> dict | None:
    """A templated request for one tool and a schema-valid call (plus distractors from pool)."""
    got = _procedural_args(tool, rng)
    if got is None:
        return None
    args, details = got
    templates = ("Please {d}{w}.", "Can you {d}{w}?", "I need to {d}{w}.", "{D}{w}, please.")
    d = _task_phrase(tool)
    w = f" with {details}" if details else ""
    query = rng.choice(templates).format(d=d, D=d[0].upper() + d[1:], w=w)
    messages = [
        {"role": "user", "content": query},
        {"role": "assistant", "content": "", "tool_calls": [{"name": tool["name"], "args": args}]},
    ]
    return _tag(
        {
            "tools": _with_distractors(tool, rng, pool),
            "messages": messages,
            "meta": {"source": "procedural", "row": tool["name"]},
        },
        "procedural",
    )


def procedural_parallel_row(tool: dict, rng: random.Random, pool: list[dict] | None = None) -> dict | None:
    """One request asking for the same task 2-4 times with different arguments, answered by as
    many calls of one tool (BFCL's "parallel": rare in the sources, 63 of 2.3k rows)."""
    calls, seen = [], set()
    for _ in range(rng.randint(2, 4)):
        got = _procedural_args(tool, rng)
        if got is None or not got[1]:
            continue
        key = json.dumps(got[0], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        calls.append(got)
    if len(calls) < 2:
        return None
    d = _task_phrase(tool)
    items = [details for _, details in calls]
    style = rng.randrange(3)
    if style == 0:
        query = f"Please {d} for each of these: " + "; ".join(f"({i + 1}) {x}" for i, x in enumerate(items)) + "."
    elif style == 1:
        query = (
            f"Can you {d} with {items[0]}"
            + "".join(rng.choice((", and also with ", ", then with ", "; and with ")) + x for x in items[1:])
            + "?"
        )
    else:
        query = f"I need to {d} with {items[0]}." + "".join(
            rng.choice((" Do the same with ", " Also with ", " And with ")) + x + "." for x in items[1:]
        )
    messages = [
        {"role": "user", "content": query},
        {"role": "assistant", "content": "", "tool_calls": [{"name": tool["name"], "args": a} for a, _ in calls]},
    ]
    return _tag(
        {
            "tools": _with_distractors(tool, rng, pool),
            "messages": messages,
            "meta": {"source": "procedural", "row": tool["name"]},
        },
        "procedural_parallel",
    )


# ------------------------------------------------------------------------------ applying ratios


def augment_rows(rows: list[dict], cfg, seed: int, tool_pool: list[dict] | None = None) -> tuple[list[dict], dict]:
    """Originals plus augmented copies, by ratio of the originals (cfg: irrelevance,
    distractors, mask_names, join_parallel, procedural, near_miss, procedural_parallel,
    join_same_tool, other_tools; floats >= 0). Deterministic."""
    rng = random.Random(seed)
    pool = tool_pool or [t for r in rows for t in r.get("tools", [])]
    out, counts = list(rows), {}

    def n_of(kind):
        return int(round(float(cfg.get(kind, 0)) * len(rows)))

    def pick(items, n):
        return rng.sample(items, min(n, len(items)))

    def add(kind, made):  # a None is a row the augmentation does not apply to
        made = [m for m in made if m is not None]
        counts[kind] = len(made)
        out.extend(made)

    add("irrelevance", [make_irrelevant(r, rng) for r in pick(rows, n_of("irrelevance"))])
    add("distractors", [add_distractors(r, pool, rng) for r in pick(rows, n_of("distractors"))])
    add("mask_names", [mask_names(r, rng) for r in pick(rows, n_of("mask_names"))])
    singles = [r for r in rows if _single_turn_calls(r)]
    n_joins = n_of("join_parallel") if len(singles) >= 2 else 0
    add("join_parallel", [join_parallel(*rng.sample(singles, 2), rng) for _ in range(n_joins)])
    add("procedural", [procedural_row(t, rng, pool) for t in pick(pool, n_of("procedural"))])
    if n_of("near_miss"):  # last, and only when asked: the other draws stay as they were
        index = NearMissIndex(pool)
        add("near_miss", [make_near_miss(r, index, rng) for r in pick(rows, n_of("near_miss"))])
    if n_of("procedural_parallel"):
        add(
            "procedural_parallel",
            [procedural_parallel_row(t, rng, pool) for t in pick(pool, n_of("procedural_parallel"))],
        )
    if n_of("join_same_tool"):  # after the others: earlier recipes draw exactly what they drew
        add("join_same_tool", [join_same_tool(g, rng) for g in _same_tool_groups(rows, n_of("join_same_tool"), rng)])
    if n_of("other_tools"):
        with_tools = [r for r in rows if r.get("tools")]
        add("other_tools", [make_other_tools(r, pick(with_tools, 8), rng) for r in pick(singles, n_of("other_tools"))])
    return out, counts
