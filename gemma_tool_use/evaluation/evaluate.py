"""BFCL evaluation of a built model: the library function every stage calls (`stage=eval`, SFT
after training, GRPO, the pipeline).

Writes into `out_dir`:
    bfcl/<category>.jsonl   one line per entry: id, result (the raw model text, BFCL's field
                            name), prompt_tokens, new_tokens, decoded calls, parse_errors,
                            valid, error_type, error, seconds
    summary.json            per-category accuracy, BFCL v4 aggregates, timing, what was not run
    results.md              the same as a Markdown table
    accuracy.png            per-category accuracy beside published anchors
Re-running into the same out_dir resumes: finished entries are not generated again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from gemma_tool_use.config.schema import TRAINING_STAGES
from gemma_tool_use.evaluation import bfcl
from gemma_tool_use.evaluation.bfcl_tables import write_bfcl_report
from gemma_tool_use.evaluation.multi_turn import run_dialogues, score_dialogue
from gemma_tool_use.format.parse import parse_model_output
from gemma_tool_use.format.render import render_conversation
from gemma_tool_use.generation.generator import Generator, SamplingParams
from gemma_tool_use.generation.tool_grammar import grammars_for
from gemma_tool_use.model.adapters import score_caveats, trained_on
from gemma_tool_use.utils.files import drop_torn_tail, iter_jsonl
from gemma_tool_use.utils.git import git_commit

log = logging.getLogger(__name__)


def read_done(path: Path) -> dict[str, dict]:
    """Records already written (resume), by entry id. A torn or bad line is not a record."""
    if not path.is_file():
        return {}
    return {rec["id"]: rec for _, rec, err in iter_jsonl(path) if err is None and isinstance(rec, dict) and "id" in rec}


def stratified_subset(entries: list[dict], per_category: int, seed: int = 0) -> list[dict]:
    """The fixed subset of one category: the `per_category` entries with the smallest
    sha256("<seed>:<id>"), in the category's order. Depends only on the ids (not on the file's
    order, the machine or the Python hash seed), so every stage of a pipeline scores the same rows."""
    import hashlib

    def key(e):
        return hashlib.sha256(f"{seed}:{e['id']}".encode()).hexdigest()

    chosen = {e["id"] for e in sorted(entries, key=key)[:per_category]}
    return [e for e in entries if e["id"] in chosen]


def select_entries(entries: list[dict], ids, limit, subset_per_category=None, subset_seed: int = 0) -> list[dict]:
    if ids:
        wanted = set(ids)
        entries = [e for e in entries if e["id"] in wanted]
    if subset_per_category:
        entries = stratified_subset(entries, int(subset_per_category), int(subset_seed))
    return entries[:limit] if limit else entries


def is_partial(eval_cfg) -> bool:
    return bool(eval_cfg.ids or eval_cfg.limit or eval_cfg.get("subset_per_category"))


def evaluate_category(category, generator, tokenizer, params, out_path: Path, eval_cfg, system_prompt, progress):
    entries = select_entries(
        bfcl.load_entries(category),
        list(eval_cfg.ids),
        eval_cfg.limit,
        eval_cfg.get("subset_per_category"),
        int(eval_cfg.get("subset_seed") or 0),
    )
    answers = bfcl.load_answers(category)
    originals = {e["id"]: e for e in bfcl.load_entries(category, hints=False)}  # for the checker
    drop_torn_tail(out_path)
    done = read_done(out_path)
    todo = [e for e in entries if e["id"] not in done]
    progress.reset(total=len(entries))
    progress.update(len(entries) - len(todo))
    progress.set_description(category)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if category in bfcl.MULTI_TURN:
        run_multi_turn_category(
            category, todo, answers, originals, generator, tokenizer, params, out_path, system_prompt, progress
        )
        return category_result(out_path, entries, len(todo), eval_cfg)
    kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
    convs = {e["id"]: bfcl.entry_conversation(e) for e in todo}
    prompts = {i: render_conversation(c, tokenizer, add_generation_prompt=True, **kwargs).ids for i, c in convs.items()}
    todo.sort(key=lambda e: len(prompts[e["id"]]))  # similar lengths share a bucket
    with out_path.open("a", encoding="utf-8") as f:

        def write(r):  # each row hits the disk as soon as it is finished (resume loses nothing)
            e = todo[r.index]
            parsed = parse_model_output(r.text, convs[e["id"]]["tools"])
            if r.stop_reason == "skipped_overlength":
                verdict = {
                    "valid": False,
                    "error_type": "prompt_too_long",
                    "error": [f"{r.prompt_tokens} prompt tokens > generation.max_prompt_len"],
                }
            else:
                verdict = bfcl.score_entry(category, originals[e["id"]], r.text, answers.get(e["id"]))
            rec = {
                "id": e["id"],
                "category": category,
                "result": r.text,
                "prompt_tokens": r.prompt_tokens,
                "new_tokens": len(r.token_ids),
                "stop_reason": r.stop_reason,
                "decoded": parsed.calls,
                "parse_errors": [x.kind for x in parsed.errors],
                **verdict,
                "seconds": round(r.seconds, 3),
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            progress.update(1)

        grammars = grammars_for([convs[e["id"]]["tools"] for e in todo], generator.constrain)
        generator.generate_ids([prompts[e["id"]] for e in todo], params, on_result=write, grammars=grammars)
    return category_result(out_path, entries, len(todo), eval_cfg)


def category_result(out_path: Path, entries, generated_now: int, eval_cfg) -> dict:
    records = read_done(out_path)
    selected = [records[e["id"]] for e in entries if e["id"] in records]
    correct = sum(1 for r in selected if r["valid"])
    return {
        "accuracy": correct / len(selected) if selected else 0.0,
        "correct": correct,
        "total_count": len(selected),
        "generated_now": generated_now,
        "full_category": not is_partial(eval_cfg),
        "ids": [e["id"] for e in entries] if is_partial(eval_cfg) else None,
    }


def run_multi_turn_category(
    category, todo, answers, originals, generator, tokenizer, params, out_path, system_prompt, progress
) -> None:
    with out_path.open("a", encoding="utf-8") as f:

        def on_done(d):
            t = time.perf_counter()
            verdict = score_dialogue(category, d, answers[d.entry["id"]], originals[d.entry["id"]])
            if d.error and d.error.startswith("prompt_too_long"):
                verdict = {"valid": False, "error_type": "prompt_too_long", "error": [d.error]}
            rec = {
                "id": d.entry["id"],
                "category": category,
                "result": d.results,
                "prompt_tokens": d.prompt_tokens[0] if d.prompt_tokens else None,
                "new_tokens": d.new_tokens,
                "steps": sum(len(t) for t in d.results),
                "turns": len(d.results),
                "inference_error": d.error,
                **verdict,
                "scoring_seconds": round(time.perf_counter() - t, 3),
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            progress.update(1)

        # Dialogues of similar length advance together; groups bound the memory of a step.
        todo = sorted(todo, key=lambda e: len(json.dumps(e.get("function", []))))
        group = max(1, generator.batch_size) * 4
        for s in range(0, len(todo), group):
            run_dialogues(todo[s : s + group], generator, tokenizer, params, system_prompt, on_done=on_done)


def _evaluate_categories(
    cfg: DictConfig, generator, tokenizer, params, out_dir: Path, tracker, step: int, categories: list[str]
) -> dict:
    """Each category in turn (resuming its finished entries), its accuracy logged at `step`."""
    per_category = {}
    with tqdm(total=0, unit="entry", dynamic_ncols=True) as progress:
        for category in categories:
            t0 = time.time()
            res = evaluate_category(
                category,
                generator,
                tokenizer,
                params,
                out_dir / "bfcl" / f"{category}.jsonl",
                cfg.eval,
                cfg.data.system_prompt,
                progress,
            )
            res["seconds"] = round(time.time() - t0, 1)
            res["entries_per_s"] = round(res["generated_now"] / res["seconds"], 3) if res["generated_now"] else None
            per_category[category] = res
            log.info(
                "%s: %.2f%% (%d/%d) in %.0fs",
                category,
                100 * res["accuracy"],
                res["correct"],
                res["total_count"],
                res["seconds"],
            )
            tracker.log({f"bfcl/{category}": res["accuracy"]}, step=step)
    return per_category


def _summary(
    cfg: DictConfig,
    per_category: dict,
    model_label: str | None,
    commit: str | None,
    seconds: float,
    grammar_warnings: dict | None = None,
) -> dict:
    """summary.json: what was scored, by which code, each category, BFCL's aggregates, the subset."""
    subset = None
    if cfg.eval.get("subset_per_category"):  # the recorded subset: its rule, and each category's ids
        subset = {
            "per_category": int(cfg.eval.subset_per_category),
            "seed": int(cfg.eval.subset_seed),
            "rule": "smallest sha256('<seed>:<id>') per category",
        }
    return {
        # what was scored: a training stage passes its own result (its adapter), not its start
        "model": model_label
        or (cfg.model.name + (f" + {cfg.model.lora_checkpoint}" if cfg.model.lora_checkpoint else "")),
        "commit": commit,
        "categories": per_category,
        "aggregates": bfcl.aggregate(per_category),
        "not_run": {c: bfcl.NOT_RUN[c] for c in cfg.eval.categories if c in bfcl.NOT_RUN},
        "partial": is_partial(cfg.eval),
        "subset": subset,
        "generation": OmegaConf.to_container(cfg.generation),
        # how the answers were decoded: tables label a constrained run (a different harness)
        "constrain": str(cfg.generation.get("constrain", "none")),
        "grammar_warnings": grammar_warnings,
        # the data that trained the scored model, and the categories whose scores it makes unclean
        "trained_on": (lineage := model_lineage(cfg)),
        "caveats": score_caveats(lineage),
        "total_seconds": round(seconds, 1),
    }


def model_lineage(cfg: DictConfig) -> list[str]:
    """The data sources behind the scored model: a training stage's own sources and those its
    start adapter records (model.lora_checkpoint)."""
    own = list(cfg.data.get("sources") or []) if str(cfg.stage.name) in TRAINING_STAGES else []
    return sorted(set(own) | set(trained_on(cfg.model.get("lora_checkpoint"))))


def evaluate_model(
    cfg: DictConfig, model, tokenizer, out_dir: Path, tracker, step: int = 0, model_label: str | None = None
) -> dict:
    """BFCL on `cfg.eval.categories` for an already built model; writes the reports into out_dir.
    `step`: the training step of the weights (where the per-category numbers are logged)."""
    categories = bfcl.check_categories(cfg.eval.categories)
    commit = git_commit()  # the code that runs, not HEAD when the run ends
    g = cfg.generation
    # An eval never aborts on one long prompt: such entries are skipped and scored invalid.
    overlength = "skip" if g.overlength == "error" else g.overlength
    t_start = time.time()
    generator = Generator.from_config(model, tokenizer, g, overlength=overlength)
    params = SamplingParams.from_config(g, cfg.seed)
    per_category = _evaluate_categories(cfg, generator, tokenizer, params, out_dir, tracker, step, categories)
    summary = _summary(cfg, per_category, model_label, commit, time.time() - t_start, generator.grammar_warnings)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_bfcl_report(out_dir, summary)
    tracker.summary({f"bfcl/{k}": v for k, v in summary["aggregates"].items() if isinstance(v, float)})
    tracker.log_table(
        "bfcl/table",
        ["category", "accuracy", "correct", "total"],
        [[c, v["accuracy"], v["correct"], v["total_count"]] for c, v in per_category.items()],
    )
    log.info("BFCL summary written to %s", out_dir / "summary.json")
    return summary
