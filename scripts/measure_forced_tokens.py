"""How many decode steps of a constrained BFCL run the grammar leaves a single token (it could be
appended without sampling) or only a few (the vocabulary head could be computed for those alone).

    .venv/bin/python scripts/measure_forced_tokens.py --bfcl outputs/constrained/final_constrained/bfcl \\
        --out experiments/constrained_decoding/forced_tokens.json

Each answer is re-tokenized (the records keep text, not ids: SentencePiece's tokenization of the
text, which the model's own ids may differ from in a few places) and replayed through its
entry's grammar; at each step the mask's allowed tokens are counted, the stop id included.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BINS = (1, 2, 16, 256, 4096)  # allowed tokens at most


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bfcl", required=True, help="a constrained run's bfcl/ folder")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from gemma_tool_use.evaluation import bfcl
    from gemma_tool_use.generation import grammar_matcher
    from gemma_tool_use.generation.tool_grammar import tool_grammar
    from gemma_tool_use.model.tokenizer import END_OF_TURN_ID, EOS_ID, load_tokenizer

    tok = load_tokenizer()
    cache = grammar_matcher.GrammarCache(grammar_matcher.grammar_tokenizer(tok, (EOS_ID, END_OF_TURN_ID)))
    per_category = {}
    for f in sorted(Path(args.bfcl).glob("*.jsonl")):
        entries = {e["id"]: e for e in bfcl.load_entries(f.stem)}
        steps, hist, replay_failed = 0, collections.Counter(), 0
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            rows = grammar_matcher.RowMatchers(cache, 1, tok.vocab_size)
            rows.assign(0, tool_grammar(bfcl.entry_conversation(entries[rec["id"]])["tools"]))
            ids = tok.encode(rec["result"]) + ([END_OF_TURN_ID] if rec["stop_reason"] == "stop" else [])
            prev, consume = 0, False
            for t in ids:
                mask = rows.masks([0], [prev], [consume], [True])[0]
                allowed = int(np.unpackbits(mask.view(np.uint8)).sum())
                if not (mask[t // 32] >> (t % 32)) & 1:
                    replay_failed += 1  # another tokenization than the model's: stop this answer
                    break
                steps += 1
                hist[next((b for b in BINS if allowed <= b), "more")] += 1
                prev, consume = t, True
        per_category[f.stem] = {
            "steps": steps,
            "answers_cut_short_in_replay": replay_failed,
            "allowed_tokens_at_most": {str(k): hist[k] for k in (*BINS, "more")},
        }
        print(f.stem, per_category[f.stem], flush=True)
    total = sum(c["steps"] for c in per_category.values())
    forced = sum(c["allowed_tokens_at_most"]["1"] for c in per_category.values())
    few = sum(c["allowed_tokens_at_most"][str(b)] for c in per_category.values() for b in BINS if b <= 16)
    report = {
        "run": args.bfcl,
        "steps": total,
        "forced_share": round(forced / total, 4),
        "at_most_16_share": round(few / total, 4),
        "categories": per_category,
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("steps", "forced_share", "at_most_16_share")}))


if __name__ == "__main__":
    main()
