"""Hardening drills: reproduce every failure case of issue 12 on the tiny model and record, per
case, what was tried, whether the run survived (the expected exit, a one-line error where the
user did something wrong, no traceback) and whether work was lost.

    .venv/bin/python scripts/drills.py [--out experiments/hardening_drills] [--only NAME ...]

Writes drills.json and drills.md into --out. Each case runs the real CLI in a fresh process
(`python -m gemma_tool_use experiments=tiny_smoke ...`) in a scratch directory, like a user
would; the real-mix cache cases need the datasets (GEMMA_TOOL_USE_DATA or ../shared/datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["experiments=tiny_smoke", "tracking=disabled"]
DATA = Path(os.environ.get("GEMMA_TOOL_USE_DATA", REPO.parent / "shared" / "datasets"))


def cli(*args, env_extra=None, timeout=900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "gemma_tool_use", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:") or "] - error:" in line]


def one_line_error(r, *must_contain) -> tuple[bool, str]:
    lines = error_lines(r.stderr)
    ok = (
        r.returncode != 0
        and "Traceback" not in r.stderr
        and len(lines) == 1
        and all(s in lines[0] for s in must_contain)
    )
    return ok, (lines[0] if lines else (r.stderr.strip().splitlines() or ["<no output>"])[-1])[:300]


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def train_steps(run: Path) -> list[int]:
    return [r["step"] for r in metrics(run) if "train/loss" in r]


def checkpoints(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / "checkpoints").glob("*") if p.name.isdigit())


def start_and_signal(args, run: Path, sig, after_steps: int):
    """Start a run, send `sig` once `after_steps` train steps are in metrics.jsonl; (rc, stderr, seconds to exit)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gemma_tool_use", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        m = run / "metrics.jsonl"
        if m.is_file() and sum("train/loss" in line for line in m.read_text().splitlines()) >= after_steps:
            break
        time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, time.time() - t0


# ---------------------------------------------------------------------------------- the cases


def drill_parser(tmp: Path) -> dict:
    sys.path.insert(0, str(REPO / "tests"))
    from test_parser_fuzz import TOOLS, fuzz_cases  # the suite's seeded mutator

    from gemma_tool_use.format.parse import parse_model_output

    raised, unserialisable, n = 0, 0, 0
    for text in fuzz_cases(10_000):
        n += 1
        try:
            res = parse_model_output(text, TOOLS)
        except Exception:  # noqa: BLE001 - counting exactly this
            raised += 1
            continue
        try:
            json.dumps(res.to_dict(), ensure_ascii=False).encode("utf-8")
        except (UnicodeEncodeError, ValueError):
            unserialisable += 1
    return {
        "tried": f"parse_model_output on {n} fuzzed outputs (huge numbers, lone surrogates, deep nesting, stray tags)",
        "survived": raised == 0 and unserialisable == 0,
        "lost": False,
        "detail": f"{raised} raised, {unserialisable} not UTF-8 JSON",
    }


CONFIG_CASES = [  # (override(s), text the one error line must name)
    (["train.max_checkpoints_to_keep=0"], "train.max_checkpoints_to_keep"),
    (["optim.warmup_steps=-5"], "optim.warmup_steps"),
    (["tpu.simulated_devices=-3"], "tpu.simulated_devices"),
    (["train.eval_batches=-1"], "train.eval_batches"),
    (["data.max_length=0"], "data.max_length"),
    (["model=gemma3_270m", "model.path=/nonexistent/x.gguf"], "/nonexistent/x.gguf"),
    (["data=sft_small", "data.root=/nonexistent"], "/nonexistent"),
    (["model.lora.target_modules=no_such_module"], "model.lora.target_modules"),
    (["data.train_files=[/nonexistent.jsonl]"], "/nonexistent.jsonl"),
    (["tpu=gpu"], "tpu"),
    (["train.init_from=/nonexistent/run"], "train.init_from"),
    (["model.lora_checkpoint=/nonexistent/run"], "model.lora_checkpoint"),
]


def drill_config(tmp: Path, overrides: list[str], names: str) -> dict:
    run = tmp / "run"
    r = cli(*TINY, *overrides, f"hydra.run.dir={run}")
    ok, line = one_line_error(r, names)
    lost = run.is_dir() and (run / "checkpoints").is_dir() and not checkpoints(run)
    return {"tried": " ".join(overrides), "survived": ok, "lost": lost, "detail": line}


def drill_final_eval(tmp: Path) -> dict:
    run = tmp / "run"
    r = cli(*TINY, "train.max_steps=3", f"hydra.run.dir={run}")
    summary = json.loads((run / "train_summary.json").read_text()) if r.returncode == 0 else {}
    evals = {m["step"]: m["eval/loss"] for m in metrics(run) if "eval/loss" in m} if run.is_dir() else {}
    ok = r.returncode == 0 and 3 in evals and summary.get("final_val_loss") == evals[3]
    return {
        "tried": "train.max_steps=3 with eval_every_steps=6: final_val_loss / job_result must describe step 3",
        "survived": ok,
        "lost": False,
        "detail": f"eval steps {sorted(evals)}, final_val_loss {summary.get('final_val_loss')}",
    }


def drill_predict(tmp: Path) -> dict:
    good = {
        "tools": [
            {
                "name": "get_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            }
        ],
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    lines = [
        json.dumps(good).encode(),
        b'{"tools": [], "messages": [{"role": "user", "content": "caf\xe9"}]}',
        json.dumps(good).encode().replace(b"Paris", b"Par\\ud800is"),
        json.dumps(good).encode(),
        json.dumps({**good, "messages": [{"role": "user", "content": "word " * 3000}]}).encode(),
        json.dumps(good).encode(),
    ]
    src = tmp / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    run = tmp / "run"
    r = cli(
        *TINY,
        "stage=predict",
        f"predict.input_file={src}",
        "generation.max_new_tokens=4",
        "generation.max_prompt_len=512",
        "generation.overlength=error",
        f"hydra.run.dir={run}",
    )
    out = run / "predictions.jsonl"
    predicted = sorted(json.loads(x)["line"] for x in out.read_text().splitlines()) if out.is_file() else []
    rejects = run / "predict_rejects.jsonl"
    rejected = sorted(json.loads(x)["line"] for x in rejects.read_text().splitlines()) if rejects.is_file() else []
    ok = r.returncode == 0 and predicted == [1, 4, 6] and rejected == [2, 3, 5] and "Traceback" not in r.stderr
    return {
        "tried": "predict on 6 rows: a non-UTF-8 byte (line 2), a lone surrogate (3), an overlength row under "
        "overlength=error (5)",
        "survived": ok,
        "lost": predicted != [1, 4, 6],
        "detail": f"exit {r.returncode}, predicted lines {predicted}, rejected lines {rejected}",
    }


def drill_predict_empty(tmp: Path) -> dict:
    src = tmp / "empty.jsonl"
    src.write_text("")
    r = cli(*TINY, "stage=predict", f"predict.input_file={src}", f"hydra.run.dir={tmp / 'run'}")
    ok, line = one_line_error(r, "empty.jsonl")
    return {"tried": "predict on an empty input file", "survived": ok, "lost": False, "detail": line}


def _mix_cache_drill(tmp: Path, damage, what: str) -> dict:
    if not (DATA / "seal_tools").is_dir():
        return {"tried": what, "survived": None, "lost": False, "detail": f"skipped: no datasets at {DATA}"}
    from gemma_tool_use.model.tokenizer import cache_root

    name = f"drill_{os.getpid()}_{int(time.time())}"  # a cache folder of its own, removed afterwards
    args = [
        *TINY,
        "data=sft_small",
        f"data.name={name}",
        f"data.root={DATA}",
        "train.max_steps=1",
        "train.eval_batches=1",
        "data.max_length=256",
        "data.length_buckets=[256]",
    ]
    env = {}
    first = cli(*args, f"hydra.run.dir={tmp / 'a'}", env_extra=env)
    if first.returncode != 0:
        return {"tried": what, "survived": False, "lost": False, "detail": f"first run failed: {first.stderr[-300:]}"}
    cache = next((cache_root() / "mixes").glob(f"{name}-*"))
    damaged = damage(cache)
    r = cli(*args, f"hydra.run.dir={tmp / 'b'}", env_extra=env)
    warned = any("is corrupt" in line and "rebuilding" in line for line in (r.stdout + r.stderr).splitlines())
    shutil.rmtree(cache, ignore_errors=True)
    return {
        "tried": what,
        "survived": r.returncode == 0 and warned and "Traceback" not in r.stderr,
        "lost": False,
        "detail": f"damaged {damaged}; exit {r.returncode}; warning: {warned}",
    }


def drill_mix_cache_npz(tmp: Path) -> dict:
    def damage(cache):
        f = next(cache.rglob("train.npz"))
        f.write_bytes(f.read_bytes()[:100])
        return f.relative_to(cache)

    return _mix_cache_drill(tmp, damage, "mix cache: truncated train.npz")


def drill_mix_cache_card(tmp: Path) -> dict:
    def damage(cache):
        f = next(cache.rglob("data_card.json"))
        f.write_text("{garbage")
        return f.relative_to(cache)

    return _mix_cache_drill(tmp, damage, "mix cache: garbage data_card.json")


def _trained_run(tmp: Path) -> Path:
    run = tmp / "run"
    r = cli(
        *TINY,
        "train.max_steps=6",
        "train.checkpoint_every_steps=3",
        "train.max_checkpoints_to_keep=3",
        f"hydra.run.dir={run}",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return run


def _checkpoint_drill(tmp: Path, damage, what: str) -> dict:
    run = _trained_run(tmp)
    damage(run / "checkpoints" / "6")
    r = cli(
        *TINY,
        "train.max_steps=9",
        "train.checkpoint_every_steps=3",
        "train.max_checkpoints_to_keep=3",
        f"hydra.run.dir={run}",
    )
    summary = json.loads((run / "train_summary.json").read_text())
    ok = (
        r.returncode == 0
        and "Traceback" not in r.stderr
        and summary["resumed_from_step"] == 3
        and summary["steps"] == 9
        and "is corrupt" in r.stdout + r.stderr
    )
    kept = (run / "checkpoints_corrupt").is_dir()
    return {
        "tried": what,
        "survived": ok,
        "lost": not kept,
        "detail": f"resumed from {summary['resumed_from_step']}, ended at {summary['steps']}; corrupt step kept aside: {kept}",
    }


def drill_ckpt_truncated(tmp):
    return _checkpoint_drill(
        tmp,
        lambda d: next((d / "model_params" / "d").iterdir()).write_bytes(b"x"),
        "latest checkpoint: truncated param file",
    )


def drill_ckpt_metadata(tmp):
    return _checkpoint_drill(
        tmp, lambda d: (d / "model_params" / "_METADATA").write_bytes(b""), "latest checkpoint: empty _METADATA"
    )


def drill_ckpt_missing(tmp):
    return _checkpoint_drill(tmp, lambda d: shutil.rmtree(d / "optimizer_state"), "latest checkpoint: missing item")


def drill_ckpt_none_intact(tmp: Path) -> dict:
    run = _trained_run(tmp)
    for step in checkpoints(run):
        (run / "checkpoints" / str(step) / "model_params" / "_METADATA").write_bytes(b"")
    r = cli(*TINY, "train.max_steps=9", f"hydra.run.dir={run}")
    ok, line = one_line_error(r, "no intact checkpoint")
    return {"tried": "every checkpoint corrupt", "survived": ok, "lost": len(checkpoints(run)) < 2, "detail": line}


def _signal_drill(tmp: Path, sig, what: str) -> dict:
    run = tmp / "run"
    args = [*TINY, "train.max_steps=12", "train.checkpoint_every_steps=1000", f"hydra.run.dir={run}"]
    rc, err, seconds = start_and_signal(args, run, sig, after_steps=3)
    done, ckpts = train_steps(run), checkpoints(run)
    stopped_ok = rc == 128 + sig and "Traceback" not in err and ckpts and max(ckpts) == max(done)
    r = cli(*args)
    summary = json.loads((run / "train_summary.json").read_text()) if r.returncode == 0 else {}
    one_per_step = train_steps(run) == list(range(1, 13))
    return {
        "tried": what,
        "survived": bool(stopped_ok) and r.returncode == 0 and one_per_step,
        "lost": not ckpts or max(ckpts) < max(done),
        "detail": f"exit {rc} {seconds:.1f}s after the signal; checkpoint {max(ckpts) if ckpts else None} of "
        f"{max(done)} steps done; resumed from {summary.get('resumed_from_step')}; one metrics line per "
        f"step: {one_per_step}",
    }


def drill_sigterm(tmp):
    return _signal_drill(tmp, signal.SIGTERM, "SIGTERM mid-training (no interval checkpoint due)")


def drill_sigint(tmp):
    return _signal_drill(tmp, signal.SIGINT, "Ctrl-C mid-training (no interval checkpoint due)")


def drill_kill_resume(tmp: Path) -> dict:
    straight = tmp / "straight"
    args = [*TINY, "train.max_steps=12", "train.checkpoint_every_steps=4"]
    assert cli(*args, f"hydra.run.dir={straight}").returncode == 0
    run = tmp / "run"
    rc, _, _ = start_and_signal([*args, f"hydra.run.dir={run}"], run, signal.SIGKILL, after_steps=6)
    r = cli(*args, f"hydra.run.dir={run}")
    a = json.loads((straight / "train_summary.json").read_text())
    b = json.loads((run / "train_summary.json").read_text()) if r.returncode == 0 else {}
    ok = r.returncode == 0 and train_steps(run) == list(range(1, 13)) and b.get("tokens_trained") == a["tokens_trained"]
    return {
        "tried": "kill -9 after step 6 (checkpoint at 4), resume",
        "survived": ok,
        "lost": False,
        "detail": f"resumed from {b.get('resumed_from_step')}; train lines {len(train_steps(run))} for 12 steps; "
        f"tokens {b.get('tokens_trained')} vs {a['tokens_trained']} straight",
    }


DRILLS = {
    "parser_fuzz": drill_parser,
    **{f"config:{o[-1]}": (lambda tmp, o=o, n=n: drill_config(tmp, o, n)) for o, n in CONFIG_CASES},
    "final_eval_at_last_step": drill_final_eval,
    "predict_bad_rows": drill_predict,
    "predict_empty_file": drill_predict_empty,
    "mix_cache_truncated_npz": drill_mix_cache_npz,
    "mix_cache_garbage_card": drill_mix_cache_card,
    "checkpoint_truncated_file": drill_ckpt_truncated,
    "checkpoint_empty_metadata": drill_ckpt_metadata,
    "checkpoint_missing_item": drill_ckpt_missing,
    "checkpoint_none_intact": drill_ckpt_none_intact,
    "sigterm": drill_sigterm,
    "sigint": drill_sigint,
    "kill9_resume_bookkeeping": drill_kill_resume,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "experiments" / "hardening_drills"))
    ap.add_argument("--only", nargs="*", help="drill names (default: all)")
    args = ap.parse_args(argv)
    results = []
    for name, fn in DRILLS.items():
        if args.only and name not in args.only:
            continue
        t0 = time.time()
        with tempfile.TemporaryDirectory(prefix="drill_") as tmp:
            try:
                rec = fn(Path(tmp))
            except Exception as e:  # noqa: BLE001 - a drill that breaks is a failed drill, recorded
                rec = {
                    "tried": name,
                    "survived": False,
                    "lost": None,
                    "detail": f"drill error: {type(e).__name__}: {e}",
                }
        rec = {"case": name, **rec, "seconds": round(time.time() - t0, 1)}
        results.append(rec)
        print(
            f"{'OK  ' if rec['survived'] else ('SKIP' if rec['survived'] is None else 'FAIL')} {name}: {rec['detail']}",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    crashed = sum(r["survived"] is False for r in results)
    lost = sum(bool(r["lost"]) for r in results)
    (out / "drills.json").write_text(json.dumps({"cases": results, "crashed": crashed, "lost": lost}, indent=2))
    rows = "\n".join(
        f"| {r['case']} | {r['tried']} | {'-' if r['survived'] is None else ('yes' if r['survived'] else 'NO')} "
        f"| {'yes' if r['lost'] else 'no'} | {r['detail']} |"
        for r in results
    )
    (out / "drills.md").write_text(
        f"# Hardening drills\n\n`{' '.join(['scripts/drills.py', *(argv or sys.argv[1:])])}`"
        f"\n\n{len(results)} cases, {crashed} crashed, {lost} lost work.\n\n"
        "| case | tried | survived | lost work | detail |\n|---|---|---|---|---|\n" + rows + "\n"
    )
    print(f"{len(results)} cases, {crashed} crashed, {lost} lost work -> {out}")
    return 1 if crashed or lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
