"""`stage=predict`: tool-call predictions for a JSONL file.

Input rows: {"tools": [...], "messages": [...]} (the conversation so far; the model answers
next). Output rows (predictions.jsonl in the run dir unless predict.output_file is set):
    {"line", "raw_text", "tool_calls", "text", "parse_errors", "prompt_tokens", "new_tokens",
     "stop_reason"}
Malformed input rows are reported by line number and skipped; nothing else stops the run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from gemma_tool_use.errors import UserError
from gemma_tool_use.mesh import build_mesh, prepare_runtime
from gemma_tool_use.runs import run_dir_of

log = logging.getLogger(__name__)


class PredictInputError(UserError, ValueError):
    pass


def read_prompts(path: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    from gemma_tool_use.chat_format import FormatError, validate_conversation

    rows, problems = [], []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise FormatError("row is not a JSON object")
                validate_conversation(row)
                if row["messages"][-1]["role"] == "assistant":
                    raise FormatError("last message is the assistant's: nothing to predict")
            except (json.JSONDecodeError, FormatError) as e:
                problems.append(f"{path}:{lineno}: {e}")
                continue
            rows.append((lineno, row))
    return rows, problems


def run(cfg: DictConfig) -> float:
    if not cfg.predict.input_file:
        raise PredictInputError("predict.input_file is required (a JSONL of {\"tools\", \"messages\"} rows)")
    src = Path(cfg.predict.input_file).expanduser()
    if not src.is_file():
        raise PredictInputError(f"predict.input_file not found: {src}")
    prepare_runtime(cfg.tpu)
    from tqdm import tqdm

    from gemma_tool_use.chat_format import parse_model_output, render_conversation
    from gemma_tool_use.generate import Generator, SamplingParams
    from gemma_tool_use.model import build_model, load_tokenizer_for

    rows, problems = read_prompts(src)
    for p in problems:
        log.warning("skipped %s", p)
    run_dir = run_dir_of(cfg)
    out_path = Path(cfg.predict.output_file) if cfg.predict.output_file else run_dir / "predictions.jsonl"
    mesh = build_mesh(cfg.tpu)
    tokenizer = load_tokenizer_for(cfg.model)
    prompt = cfg.data.system_prompt
    kwargs = {} if prompt is None else {"system_prompt": prompt}
    prompts = [render_conversation(r, tokenizer, add_generation_prompt=True, **kwargs).ids for _, r in rows]
    g = cfg.generation
    with mesh:
        model = build_model(cfg.model, mesh, cfg.seed)
        generator = Generator(model, tokenizer, batch_size=g.batch_size, max_prompt_len=g.max_prompt_len,
                              overlength=g.overlength, max_batch_tokens=g.max_batch_tokens)
        params = SamplingParams(max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k,
                                top_p=g.top_p, seed=cfg.seed, stop_ids=tuple(g.stop_ids))
        t0 = time.time()
        with tqdm(total=len(prompts), desc="predict", unit="row") as bar:
            results = generator.generate_ids(prompts, params, progress=lambda n: bar.update(n - bar.n))
        seconds = time.time() - t0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    n_calls, n_errors = 0, 0
    with out_path.open("w", encoding="utf-8") as f:
        for (lineno, row), res in zip(rows, results):
            parsed = parse_model_output(res.text, row.get("tools"))
            n_calls += len(parsed.calls)
            n_errors += len(parsed.errors)
            f.write(json.dumps({"line": lineno, "raw_text": res.text, "tool_calls": parsed.calls, "text": parsed.text,
                                "parse_errors": parsed.to_dict()["errors"], "prompt_tokens": res.prompt_tokens,
                                "new_tokens": len(res.token_ids), "stop_reason": res.stop_reason},
                               ensure_ascii=False) + "\n")
    new_tokens = sum(len(r.token_ids) for r in results)
    summary = {"rows": len(rows), "skipped_rows": len(problems), "tool_calls": n_calls, "parse_errors": n_errors,
               "seconds": round(seconds, 2), "new_tokens_per_s": round(new_tokens / seconds, 1) if seconds else None,
               "output": str(out_path)}
    (run_dir / "predict_summary.json").write_text(json.dumps(summary, indent=2))
    log.info("predict: %s", json.dumps(summary))
    return float(n_errors)
