"""Stage 2: `stage=eval`, BFCL evaluation of any model the framework loads (base weights, or
SFT/GRPO LoRA adapters via model.lora_checkpoint).

Run dir after a run:
    bfcl/<category>.jsonl   one line per entry: id, result (the raw model text, BFCL's field
                            name), prompt_tokens, new_tokens, decoded calls, parse_errors,
                            valid, error_type, error, seconds
    summary.json            per-category accuracy, BFCL v4 aggregates, timing, what was not run
    results.md              the same as a Markdown table
    accuracy.png            per-category accuracy beside published anchors
Re-running with the same hydra.run.dir resumes: finished entries are not generated again.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gemma_tool_use.mesh import build_mesh, prepare_runtime
from gemma_tool_use.stages.sft import run_dir_of, wandb_group

log = logging.getLogger(__name__)


def read_done(path: Path) -> dict[str, dict]:
    """Records already written (resume). A torn last line from a kill is ignored."""
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                done[rec["id"]] = rec
            except (json.JSONDecodeError, KeyError):
                continue
    return done


def drop_torn_tail(path: Path) -> None:
    """A kill mid-write leaves a partial last line; cut it so appended records stay parseable."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def select_entries(entries: list[dict], ids, limit) -> list[dict]:
    if ids:
        wanted = set(ids)
        entries = [e for e in entries if e["id"] in wanted]
    return entries[:limit] if limit else entries


def evaluate_category(category, generator, tokenizer, params, out_path: Path, eval_cfg, system_prompt, progress):
    from gemma_tool_use import bfcl
    from gemma_tool_use.chat_format import parse_model_output, render_conversation

    entries = select_entries(bfcl.load_entries(category), list(eval_cfg.ids), eval_cfg.limit)
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
        run_multi_turn_category(category, todo, answers, originals, generator, tokenizer, params, out_path,
                                system_prompt, progress)
        return category_result(out_path, entries, len(todo), eval_cfg)
    kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
    convs = {e["id"]: bfcl.entry_conversation(e) for e in todo}
    prompts = {i: render_conversation(c, tokenizer, add_generation_prompt=True, **kwargs).ids for i, c in convs.items()}
    todo.sort(key=lambda e: len(prompts[e["id"]]))  # similar lengths share a bucket
    chunk = max(1, generator.batch_size) * 4  # results hit the disk every few batches (resume)
    with out_path.open("a", encoding="utf-8") as f:
        for s in range(0, len(todo), chunk):
            part = todo[s : s + chunk]
            results = generator.generate_ids([prompts[e["id"]] for e in part], params)
            for e, r in zip(part, results):
                parsed = parse_model_output(r.text, convs[e["id"]]["tools"])
                if r.stop_reason == "skipped_overlength":
                    verdict = {"valid": False, "error_type": "prompt_too_long",
                               "error": [f"{r.prompt_tokens} prompt tokens > generation.max_prompt_len"]}
                else:
                    verdict = bfcl.score_entry(category, originals[e["id"]], r.text, answers.get(e["id"]))
                rec = {"id": e["id"], "category": category, "result": r.text, "prompt_tokens": r.prompt_tokens,
                       "new_tokens": len(r.token_ids), "stop_reason": r.stop_reason, "decoded": parsed.calls,
                       "parse_errors": [x.kind for x in parsed.errors], **verdict,
                       "seconds": round(r.seconds / max(1, len(part)), 3)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            progress.update(len(part))
    return category_result(out_path, entries, len(todo), eval_cfg)


def category_result(out_path: Path, entries, generated_now: int, eval_cfg) -> dict:
    records = read_done(out_path)
    selected = [records[e["id"]] for e in entries if e["id"] in records]
    correct = sum(1 for r in selected if r["valid"])
    return {"accuracy": correct / len(selected) if selected else 0.0, "correct": correct,
            "total_count": len(selected), "generated_now": generated_now,
            "full_category": not (eval_cfg.ids or eval_cfg.limit)}


def run_multi_turn_category(category, todo, answers, originals, generator, tokenizer, params, out_path,
                            system_prompt, progress) -> None:
    from gemma_tool_use.multi_turn import run_dialogues, score_dialogue

    with out_path.open("a", encoding="utf-8") as f:
        def on_done(d):
            t = time.perf_counter()
            verdict = score_dialogue(category, d, answers[d.entry["id"]], originals[d.entry["id"]])
            if d.error and d.error.startswith("prompt_too_long"):
                verdict = {"valid": False, "error_type": "prompt_too_long", "error": [d.error]}
            rec = {"id": d.entry["id"], "category": category, "result": d.results,
                   "prompt_tokens": d.prompt_tokens[0] if d.prompt_tokens else None, "new_tokens": d.new_tokens,
                   "steps": sum(len(t) for t in d.results), "turns": len(d.results), "inference_error": d.error,
                   **verdict, "scoring_seconds": round(time.perf_counter() - t, 3)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            progress.update(1)

        # Dialogues of similar length advance together; groups bound the memory of a step.
        todo = sorted(todo, key=lambda e: len(json.dumps(e.get("function", []))))
        group = max(1, generator.batch_size) * 4
        for s in range(0, len(todo), group):
            run_dialogues(todo[s : s + group], generator, tokenizer, params, system_prompt, on_done=on_done)


def write_reports(run_dir: Path, summary: dict) -> None:
    from gemma_tool_use import bfcl

    per = summary["categories"]
    lines = ["| category | accuracy | correct / total |", "|---|---|---|"]
    lines += [f"| {c} | {100 * v['accuracy']:.2f} | {v['correct']} / {v['total_count']} |" for c, v in per.items()]
    agg = summary["aggregates"]
    lines += ["", "| aggregate (BFCL v4) | value |", "|---|---|"]
    for k in ("non_live", "simple", "live", "irrelevance", "multi_turn", "overall_agentic_not_run"):
        if k in agg:
            lines.append(f"| {k} | {'n/a' if agg[k] is None else f'{100 * agg[k]:.2f}'} |")
    if summary.get("not_run"):
        lines += ["", "Not run: " + "; ".join(f"{k} ({v})" for k, v in summary["not_run"].items())]
    if summary.get("partial"):
        lines += ["", "Partial: a subset of entries (eval.limit / eval.ids); not comparable to the leaderboard."]
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = list(per)
    series = {"this run": [100 * per[c]["accuracy"] for c in cats]}
    for name, anchors in bfcl.PUBLISHED_ANCHORS.items():
        if any(c in anchors for c in cats):
            series[name] = [anchors.get(c, np.nan) for c in cats]
    fig, ax = plt.subplots(figsize=(max(7, 1.6 * len(cats)), 5.5))
    width = 0.8 / len(series)
    for i, (name, vals) in enumerate(series.items()):
        ax.bar(np.arange(len(cats)) + i * width - 0.4 + width / 2, vals, width, label=name,
               color="black" if name == "this run" else None)
    ax.set_xticks(np.arange(len(cats)), cats, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"BFCL per-category accuracy: {summary['model']}")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.28), frameon=False)
    fig.tight_layout()
    fig.savefig(run_dir / "accuracy.png", dpi=120)
    plt.close(fig)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def evaluate_model(cfg: DictConfig, model, tokenizer, out_dir: Path, tracker) -> dict:
    """BFCL on `cfg.eval.categories` for an already built model; writes the reports into out_dir."""
    from tqdm import tqdm

    from gemma_tool_use import bfcl
    from gemma_tool_use.generate import Generator, SamplingParams

    categories = bfcl.check_categories(cfg.eval.categories)
    not_run = {c: bfcl.NOT_RUN[c] for c in cfg.eval.categories if c in bfcl.NOT_RUN}
    commit = git_commit()  # the code that runs, not HEAD when the run ends
    g = cfg.generation
    # An eval never aborts on one long prompt: such entries are skipped and scored invalid.
    overlength = "skip" if g.overlength == "error" else g.overlength
    t_start = time.time()
    generator = Generator(model, tokenizer, batch_size=g.batch_size, max_prompt_len=g.max_prompt_len,
                          overlength=overlength, max_batch_tokens=g.max_batch_tokens)
    params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                            top_p=g.top_p, seed=cfg.seed, stop_ids=tuple(g.stop_ids))
    per_category = {}
    with tqdm(total=0, unit="entry", dynamic_ncols=True) as progress:
        for category in categories:
            t0 = time.time()
            res = evaluate_category(category, generator, tokenizer, params, out_dir / "bfcl" / f"{category}.jsonl",
                                    cfg.eval, cfg.data.system_prompt, progress)
            res["seconds"] = round(time.time() - t0, 1)
            res["entries_per_s"] = round(res["generated_now"] / res["seconds"], 3) if res["generated_now"] else None
            per_category[category] = res
            log.info("%s: %.2f%% (%d/%d) in %.0fs", category, 100 * res["accuracy"], res["correct"],
                     res["total_count"], res["seconds"])
            tracker.log({f"bfcl/{category}": res["accuracy"]}, step=0)
    summary = {
        "model": cfg.model.name + (f" + {cfg.model.lora_checkpoint}" if cfg.model.lora_checkpoint else ""),
        "commit": commit,
        "categories": per_category,
        "aggregates": bfcl.aggregate(per_category),
        "not_run": not_run,
        "partial": bool(cfg.eval.limit or cfg.eval.ids),
        "generation": OmegaConf.to_container(cfg.generation),
        "total_seconds": round(time.time() - t_start, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    write_reports(out_dir, summary)
    tracker.summary({f"bfcl/{k}": v for k, v in summary["aggregates"].items() if isinstance(v, float)})
    tracker.log_table("bfcl/table", ["category", "accuracy", "correct", "total"],
                      [[c, v["accuracy"], v["correct"], v["total_count"]] for c, v in per_category.items()])
    log.info("BFCL summary written to %s", out_dir / "summary.json")
    return summary


def run(cfg: DictConfig) -> float:
    from gemma_tool_use import bfcl

    bfcl.check_categories(cfg.eval.categories)  # config error before JAX starts
    prepare_runtime(cfg.tpu)

    from gemma_tool_use.model import build_model, load_tokenizer_for
    from gemma_tool_use.tracking import Tracker

    run_dir = run_dir_of(cfg)
    mesh = build_mesh(cfg.tpu)
    tokenizer = load_tokenizer_for(cfg.model)
    config_dict = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    with Tracker(run_dir, cfg.tracking, config_dict, name=run_dir.name, group=wandb_group(cfg)) as tracker, mesh:
        model = build_model(cfg.model, mesh, cfg.seed)
        summary = evaluate_model(cfg, model, tokenizer, run_dir, tracker)
    accs = [v["accuracy"] for v in summary["categories"].values()]
    return sum(accs) / len(accs) if accs else 0.0
