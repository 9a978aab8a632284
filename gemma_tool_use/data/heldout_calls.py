"""A held-out tool-calling set: public test splits whose tools no training source offers.

The validation split (mix.split_by_tool) holds out tools of the training sources, but for the
broad mix 93% of it is SGD, and 3 of its 427 rows need several calls. This set measures what the
model is judged on beyond BFCL: requests for tools it never saw, answered by one call, by several
calls, or by none. Prompts come from test splits we never train on (hammer/apibank_l1,
hammer/apibank_l2, hammer/toolalpaca, toolrl/rlla_4k_test) and from SGD's dev split (services the
train split lacks), kept only when every offered tool is new: its name (lowercased, letters and
digits only) is offered by no row of any training source and is in no tool pool, a stricter test
than "not in the rows this run trained"; and left out when a gold call passes a credential the
conversation never states (SECRET_ARG). Each prompt is labelled with how it was made:

    real       the source's own request and gold answer (the last model turn; for SGD dialogues,
               the first turn with calls), the conversation before it as the prompt
    joined     2-3 real single-turn requests joined into one (augment.join_parallel for different
               tools, augment.join_same_tool for one tool): as many calls as requests
    other_tools  a real call request offered only another source's tools: no call fits, the gold
               answer is text (BFCL's irrelevance, on new tools)

Kinds are balanced (evaluation/call_decisions.decision_prompts), sources round-robin within a kind.
`python -m gemma_tool_use.data.heldout_calls --data sft_broad --out <file>` writes the prompts;
`stage=predict predict.input_file=<file>` predicts them and scores the decisions (decisions.json).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import re
from pathlib import Path

from omegaconf import OmegaConf

from gemma_tool_use.data.augment import join_parallel, join_same_tool
from gemma_tool_use.data.conversations import LoadReport
from gemma_tool_use.data.mix import data_root, tool_pool
from gemma_tool_use.data.rows import REFUSAL
from gemma_tool_use.data.sources import load_source
from gemma_tool_use.utils.paths import conf_dir

# The test splits and dev split this set draws on; none is in any training mix.
EVAL_SOURCES = ("hammer/apibank_l1", "hammer/apibank_l2", "hammer/toolalpaca", "toolrl/rlla_4k_test", "sgd/dev")
# Sources whose rows are whole dialogues: the gold turn is the first one that calls.
DIALOGUE_SOURCES = ("sgd/",)
DEFAULT_PER_KIND = {"one_call": 120, "several_calls": 100, "no_call": 100}


def tool_key(name: str) -> str:
    """A tool name as compared against training: "Get_Weather" and "getweather" are one name."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def trained_tool_keys(sources: list[str], pools: list[str], root: Path) -> set[str]:
    """Every tool name a training source's rows or a tool pool offers (all rows, not one mix's
    sample: a superset of what any run trained on)."""
    keys: set[str] = set()
    for name in sources:
        for r in load_source(name, root, LoadReport()):
            keys |= {tool_key(t["name"]) for t in r["tools"]}
    if pools:
        keys |= {tool_key(t["name"]) for t in tool_pool(pools, root, strict=False)}
    return keys


def _gold_turn(source: str, messages: list[dict]) -> int | None:
    """The index of the model turn a row is scored on."""
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if source.startswith(DIALOGUE_SOURCES):
        turns = [i for i in turns if messages[i].get("tool_calls")]
        return turns[0] if turns else None
    return turns[-1] if turns else None


# Argument names of credentials: a gold value for one that the conversation never states can only
# be guessed (ToolAlpaca's access keys, API-Bank's tokens), and "the request lacks a required
# parameter" is then a right answer. Such prompts are left out (counted in the card).
# Matched at the end of the name, letters and digits only: "access_key", "apiKey", "token", not "keywords".
SECRET_ARG = re.compile(r"(key|token|appid|secret|password)$")


def needs_an_unstated_secret(messages: list[dict], gold: list[dict]) -> bool:
    """A gold call passes a credential whose value the conversation does not contain."""
    said = json.dumps(messages, ensure_ascii=False)
    return any(
        SECRET_ARG.search(tool_key(k)) and isinstance(v, str) and json.dumps(v, ensure_ascii=False)[1:-1] not in said
        for c in gold
        for k, v in (c.get("args") or {}).items()
    )


def real_prompts(source: str, rows: list[dict], trained: set[str], dropped: dict | None = None) -> list[dict]:
    """The source's rows as prompts, where every offered tool is new and every gold value can be
    known (`dropped` counts the rest by reason)."""
    out, dropped = [], dropped if dropped is not None else {}
    for r in rows:
        if not r.get("tools") or any(tool_key(t["name"]) in trained for t in r["tools"]):
            continue
        turn = _gold_turn(source, r["messages"])
        if turn is None:
            continue
        if needs_an_unstated_secret(r["messages"][:turn], r["messages"][turn].get("tool_calls") or []):
            dropped["gold_needs_an_unstated_secret"] = dropped.get("gold_needs_an_unstated_secret", 0) + 1
            continue
        out.append(
            {
                "tools": r["tools"],
                "messages": r["messages"][:turn],
                "gold": r["messages"][turn].get("tool_calls") or [],
                "id": f"{source}:{r.get('meta', {}).get('row')}",
                "source": source,
                "how": "real",
            }
        )
    return out


def _single_turn(p: dict) -> dict | None:
    """A real one-user-message prompt with calls, as a row augment's joins take."""
    msgs = [m for m in p["messages"] if m["role"] != "system"]
    if len(msgs) != 1 or msgs[0]["role"] != "user" or not p["gold"]:
        return None
    return {
        "tools": p["tools"],
        "messages": [*msgs, {"role": "assistant", "content": "", "tool_calls": p["gold"]}],
        "meta": {"source": p["source"], "row": p["id"].partition(":")[2]},
    }


def _from_row(row: dict, how: str) -> dict:
    return {
        "tools": row["tools"],
        "messages": row["messages"][:-1],
        "gold": row["messages"][-1]["tool_calls"],
        "id": f"{how}:{row['meta']['source']}:{row['meta']['row']}",
        "source": "joined",  # one source for balancing: the joins are one way of making prompts
        "how": how,
    }


def joined_prompts(real: list[dict], n: int, seed: int) -> list[dict]:
    """Up to n several-call prompts joined from real single-turn ones: half of one tool (2-3
    requests that call it), half of two different tools."""
    rng = random.Random(seed)
    singles = [s for p in real if len(p["gold"]) == 1 and (s := _single_turn(p))]
    by_tool: dict[str, list[dict]] = {}
    for s in singles:
        by_tool.setdefault(s["messages"][-1]["tool_calls"][0]["name"], []).append(s)
    out, seen, tries = [], set(), 0
    names = sorted(k for k, v in by_tool.items() if len(v) >= 2)
    while len(out) < n and tries < 50 * n and singles:
        tries += 1
        if len(out) % 2 == 0 and names:
            group = by_tool[rng.choice(names)]
            row = join_same_tool(rng.sample(group, min(len(group), rng.choice((2, 3)))), rng)
            how = "joined_same_tool"
        else:
            row, how = join_parallel(*rng.sample(singles, 2), rng), "joined"
        if row and row["meta"]["row"] not in seen:
            seen.add(row["meta"]["row"])
            out.append(_from_row(row, how))
    return out


def other_tools_prompts(real: list[dict], seed: int) -> list[dict]:
    """Real call requests offered only another source's tools (a request about movies offered
    a bank's tools): no call fits, the answer is text. Another source, not the same row with its
    called tools removed: an API's other endpoints often serve the same request. Only prompts with
    no calls in their history (those would name tools no longer offered)."""
    rng = random.Random(seed)
    plain = [p for p in real if p["gold"] and not any(m.get("tool_calls") for m in p["messages"])]
    out = []
    for p in plain:
        others = [q for q in plain if q["source"] != p["source"]]
        if not others:
            continue
        q = copy.deepcopy(p)
        donor = rng.choice(others)
        q.update(tools=copy.deepcopy(donor["tools"]), gold=[], how="other_tools", gold_text=REFUSAL)
        q["id"] = f"other_tools:{p['id']}<{donor['id']}"
        out.append(q)
    return out


def balanced(prompts: list[dict], per_kind: dict[str, int], seed: int) -> list[dict]:
    """Up to per_kind[k] prompts of each gold kind, the sources taken in turn (each source's
    prompts in a fixed order: sha256 of seed and id), so no source fills a kind alone."""
    out = []
    for kind, limit in per_kind.items():
        pools: dict[str, list[dict]] = {}
        for p in prompts:
            if _kind(p["gold"]) == kind:
                pools.setdefault(p["source"], []).append(p)
        for group in pools.values():
            group.sort(key=lambda p: hashlib.sha256(f"{seed}:{p['id']}".encode()).hexdigest())
        taken = 0
        while taken < limit and any(pools.values()):
            for src in sorted(pools):
                if pools[src] and taken < limit:
                    out.append(pools[src].pop(0))
                    taken += 1
    return out


def _kind(calls: list) -> str:
    return "no_call" if not calls else "one_call" if len(calls) == 1 else "several_calls"


def build(data_cfg, root: Path, per_kind: dict[str, int] | None = None, seed: int = 0) -> tuple[list[dict], dict]:
    """(prompts, card): the balanced held-out set for a training data config, and its counts."""
    per_kind = per_kind or DEFAULT_PER_KIND
    trained = trained_tool_keys(list(data_cfg.sources), list(data_cfg.get("tool_pools") or []), root)
    real, card = [], {"trained_tool_names": len(trained), "sources": {}}
    for source in EVAL_SOURCES:
        rows = load_source(source, root, LoadReport())
        dropped: dict = {}
        kept = real_prompts(source, rows, trained, dropped)
        card["sources"][source] = {"rows": len(rows), "kept": len(kept), **dropped}
        real += kept
    made = real + joined_prompts(real, per_kind.get("several_calls", 0), seed) + other_tools_prompts(real, seed)
    prompts = balanced(made, per_kind, seed)
    card["prompts"] = len(prompts)
    card["by_kind_and_how"] = {}
    for p in prompts:
        key = f"{_kind(p['gold'])}/{p['how']}"
        card["by_kind_and_how"][key] = card["by_kind_and_how"].get(key, 0) + 1
    card["by_source"] = {}
    for p in prompts:
        card["by_source"][p["source"]] = card["by_source"].get(p["source"], 0) + 1
    return prompts, card


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="sft_broad", help="the training data config (conf/data/<name>.yaml)")
    ap.add_argument("--out", required=True, type=Path, help="the prompts JSONL to write (a card .json beside it)")
    ap.add_argument("--root", default=None, help="the data root (default: $GEMMA_TOOL_USE_DATA, else the cache)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    conf = conf_dir() / "data" / f"{args.data}.yaml"
    if not conf.is_file():
        raise SystemExit(f"--data {args.data}: no data config {conf}")
    prompts, card = build(OmegaConf.load(conf), data_root(args.root), seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts))
    card["data"] = args.data
    args.out.with_suffix(".card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
