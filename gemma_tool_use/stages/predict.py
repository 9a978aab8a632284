"""`stage=predict`: tool-call predictions for a JSONL file.

Input rows: {"tools": [...], "messages": [...]} (the conversation so far; the model answers
next). Output rows (predictions.jsonl in the run dir unless predict.output_file is set):
    {"line", "raw_text", "tool_calls", "text", "parse_errors", "prompt_tokens", "new_tokens",
     "stop_reason"}
Where every row also carries "gold" (the calls due; [] for none), as data/heldout_calls writes
them, the decisions are scored too: <run dir>/decisions.json (evaluation/call_decisions: false
refusals, false calls, right call counts, right functions, exact calls; per kind, source, how).

A bad input row never stops the run: each one is written to <run dir>/predict_rejects.jsonl as
{"line": <file line>, "reason": ...} and every other row is predicted. Bad rows are lines that
are not UTF-8 or not JSON, rows holding invalid Unicode (a lone surrogate escape such as
"\\ud800"), rows that are not a conversation to answer, and prompts longer than
generation.max_prompt_len under generation.overlength=error (the default). For a batch job,
"error" means "this row is an error", named by its file line, not "lose every other row's
prediction": the rejects file and a warning say which rows to fix (overlength=skip instead keeps
the row in predictions.jsonl with stop_reason "skipped_overlength"; truncate_left predicts from
the most recent tokens). An input with no row to predict is refused (PredictInputError, exit 4)
before JAX or the model loads, rejects file written.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gemma_tool_use.evaluation import call_decisions
from gemma_tool_use.format.parse import parse_model_output
from gemma_tool_use.format.render import FormatError, render_conversation, validate_conversation
from gemma_tool_use.orchestration.runs import run_dir_of
from gemma_tool_use.orchestration.stage_context import open_stage
from gemma_tool_use.utils.errors import UserError
from gemma_tool_use.utils.files import iter_jsonl, read_jsonl, write_json_atomic

log = logging.getLogger(__name__)

REJECTS_FILE = "predict_rejects.jsonl"
DECISIONS_FILE = "decisions.json"  # written when every input row carries its "gold" calls


class PredictInputError(UserError, ValueError):
    pass


def invalid_unicode_at(value: Any, where: str = "row") -> str | None:
    """Where a string holds a lone surrogate (JSON's "\\ud800" decodes to one; UTF-8 cannot
    encode it and the tokenizer fails on it), or None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"{where} (code point U+{ord(value[e.start]):04X} at character {e.start})"
        return None
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for k, v in items:
        key_bad = invalid_unicode_at(k, f"a key of {where}") if isinstance(value, dict) else None
        if key_bad:
            return key_bad
        child = f"{where}{k}" if isinstance(value, list) else (f"{k}" if where == "row" else f"{where}.{k}")
        found = invalid_unicode_at(v, child)
        if found:
            return found
    return None


def read_prompts(path: Path) -> tuple[list[tuple[int, dict]], list[dict]]:
    """(rows to predict as (file line, row), rejects as {"line", "reason"}). Never raises on content:
    one bad line (bytes, JSON, Unicode, schema) costs that line only. Pure Python, no JAX."""
    rows, rejects = [], []
    for lineno, row, error in iter_jsonl(path):
        if error is None:
            try:
                if not isinstance(row, dict):
                    raise FormatError(f"row is a JSON {type(row).__name__}, not an object")
                bad = invalid_unicode_at(row)
                if bad:
                    raise FormatError(f"invalid Unicode: lone surrogate in {bad}")
                validate_conversation(row)
                if row["messages"][-1]["role"] == "assistant":
                    raise FormatError("last message is the assistant's: nothing to predict")
            except FormatError as e:
                error = str(e)
        if error is not None:
            rejects.append({"line": lineno, "reason": error})
            continue
        rows.append((lineno, row))
    return rows, rejects


def _write_rejects(path: Path, rejects: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in sorted(rejects, key=lambda r: r["line"]):
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def _input_file(cfg: DictConfig) -> Path:
    if not cfg.predict.input_file:
        raise PredictInputError('predict.input_file is required (a JSONL of {"tools", "messages"} rows)')
    src = Path(cfg.predict.input_file).expanduser()
    if not src.is_file():
        raise PredictInputError(f"predict.input_file not found: {src}")
    return src


def _refuse_no_rows(src: Path, rejects: list[dict], rejects_path: Path) -> None:
    """An input with no row to predict: its rejects file, then PredictInputError."""
    _write_rejects(rejects_path, rejects)
    if not rejects:
        raise PredictInputError(f"predict.input_file={src}: no rows (the file is empty or blank); nothing to predict")
    raise PredictInputError(
        f"predict.input_file={src}: no valid row ({len(rejects)} rejected, first "
        f"{src.name}:{rejects[0]['line']}: {rejects[0]['reason']}); reasons per line in {rejects_path}"
    )


def _render_prompts(
    cfg: DictConfig, rows: list[tuple[int, dict]], tokenizer, rejects: list[dict]
) -> tuple[list[tuple[int, dict]], list]:
    """(rows kept, their prompt ids); a row that cannot be rendered, or is too long under
    generation.overlength=error, is appended to `rejects` instead."""
    system_prompt = cfg.data.system_prompt
    kwargs = {} if system_prompt is None else {"system_prompt": system_prompt}
    g = cfg.generation
    kept, prompts = [], []
    for lineno, row in rows:
        try:
            ids = render_conversation(row, tokenizer, add_generation_prompt=True, **kwargs).ids
        except (FormatError, ValueError, TypeError, RuntimeError, UnicodeError) as e:  # one row, not the run
            rejects.append({"line": lineno, "reason": f"cannot render the prompt: {type(e).__name__}: {e}"})
            continue
        if len(ids) > g.max_prompt_len and g.overlength == "error":
            rejects.append(
                {
                    "line": lineno,
                    "reason": f"overlength: {len(ids)} prompt tokens > generation.max_prompt_len="
                    f"{g.max_prompt_len} (generation.overlength=skip or truncate_left, or raise the limit)",
                }
            )
            continue
        kept.append((lineno, row))
        prompts.append(ids)
    return kept, prompts


def _report_rejects(src: Path, rejects: list[dict], rejects_path: Path) -> None:
    _write_rejects(rejects_path, rejects)
    if rejects:
        first = min(rejects, key=lambda r: r["line"])
        log.warning(
            "%d input row(s) rejected, not predicted (first %s:%d: %s); one line each in %s",
            len(rejects),
            src.name,
            first["line"],
            first["reason"],
            rejects_path,
        )


def _generate(cfg: DictConfig, mesh, tokenizer, prompts: list, tool_lists: list) -> tuple[list, float]:
    """(generation results, seconds) for the prompts (each offered its row's tools), with the
    configured model, sampling and constraint (inside open_stage: the runtime is prepared, the mesh
    entered)."""
    from tqdm import tqdm

    from gemma_tool_use.generation.generator import Generator, SamplingParams
    from gemma_tool_use.generation.tool_grammar import grammars_for
    from gemma_tool_use.model.loading import build_model

    g = cfg.generation
    model = build_model(cfg.model, mesh, cfg.seed)
    generator = Generator.from_config(model, tokenizer, g)
    params = SamplingParams.from_config(g, cfg.seed)
    t0 = time.time()
    with tqdm(total=len(prompts), desc="predict", unit="row") as bar:
        results = generator.generate_ids(
            prompts,
            params,
            progress=lambda n: bar.update(n - bar.n),
            grammars=grammars_for(tool_lists, generator.constrain),
        )
    return results, time.time() - t0


def _write_predictions(out_path: Path, kept: list[tuple[int, dict]], results: list) -> tuple[int, int]:
    """predictions.jsonl, one row per kept input row; returns (tool calls, parse errors)."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_calls, n_errors = 0, 0
    with out_path.open("w", encoding="utf-8") as f:
        for (lineno, row), res in zip(kept, results):
            parsed = parse_model_output(res.text, row.get("tools"))
            n_calls += len(parsed.calls)
            n_errors += len(parsed.errors)
            f.write(
                json.dumps(
                    {
                        "line": lineno,
                        "raw_text": res.text,
                        "tool_calls": parsed.calls,
                        "text": parsed.text,
                        "parse_errors": parsed.to_dict()["errors"],
                        "prompt_tokens": res.prompt_tokens,
                        "new_tokens": len(res.token_ids),
                        "stop_reason": res.stop_reason,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return n_calls, n_errors


def run(cfg: DictConfig) -> float:
    src = _input_file(cfg)
    run_dir = run_dir_of(cfg)
    rejects_path = run_dir / REJECTS_FILE

    # The input is read and checked before JAX starts: a file with nothing to predict fails in
    # a fraction of a second, not after the model has loaded.
    rows, rejects = read_prompts(src)
    if not rows:
        _refuse_no_rows(src, rejects, rejects_path)

    out_path = Path(cfg.predict.output_file).expanduser() if cfg.predict.output_file else run_dir / "predictions.jsonl"
    with open_stage(cfg, tracker=False) as ctx:
        kept, prompts = _render_prompts(cfg, rows, ctx.tokenizer, rejects)
        _report_rejects(src, rejects, rejects_path)
        if not kept:
            raise PredictInputError(
                f"predict.input_file={src}: no valid row ({len(rejects)} rejected); reasons per line in {rejects_path}"
            )
        tool_lists = [row.get("tools") or [] for _, row in kept]
        results, seconds = _generate(cfg, ctx.mesh, ctx.tokenizer, prompts, tool_lists)
    n_calls, n_errors = _write_predictions(out_path, kept, results)
    new_tokens = sum(len(r.token_ids) for r in results)
    summary = {
        "rows": len(kept),
        "constrain": str(cfg.generation.constrain),
        "rejected_rows": len(rejects),
        "tool_calls": n_calls,
        "parse_errors": n_errors,
        "seconds": round(seconds, 2),
        "new_tokens_per_s": round(new_tokens / seconds, 1) if seconds else None,
        "output": str(out_path),
        "rejects": str(rejects_path),
    }
    if all("gold" in row for _, row in kept):  # a scored set (data/heldout_calls, the curve's val prompts)
        decisions = call_decisions.score_lines(kept, read_jsonl(out_path))
        write_json_atomic(run_dir / DECISIONS_FILE, decisions, indent=2)
        summary["decisions"] = {k: v for k, v in decisions.items() if k.endswith("_rate")}
        summary["decisions_file"] = str(run_dir / DECISIONS_FILE)
    (run_dir / "predict_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("predict: %s", json.dumps(summary))
    return float(n_errors)
