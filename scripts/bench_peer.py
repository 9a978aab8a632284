"""Ours against the usual PyTorch alternative (transformers + PEFT) on this machine, in one run.

    .venv/bin/python scripts/bench_peer.py --peer-python /path/to/peer/bin/python \
        --out experiments/peer_bench/result.json

The peer's packages are the optional extra `peer` (`pip install -e .[peer]`, or any venv with
torch, transformers and peft; --peer-python points at its interpreter). Both sides load the same
weights: the HF-layout directory our GGUF conversion writes (model.source=gguf's cache) is a
checkpoint transformers reads as is.

Every measurement runs in a fresh process of its own (so each peak RSS belongs to one task),
and the two sides alternate, task by task, repetition by repetition (the machine's drift hits
both). Both sides get the same token ids, the same padded shapes and the same loss positions,
written once by this driver. Tasks:

- train BxT: one LoRA step (rank 16, alpha 32, every attention and MLP projection, AdamW,
  global-norm clip 1.0), loss on completion tokens only: the vocabulary projection runs at the
  loss positions only, on both sides. The peer gathers exactly the real ones (`hidden[rows, pos]`,
  no padding slot); ours runs on its collate's dealt slots (data/batching.py: the batch's targets
  over B x K slots, K a bucket, so a few padding slots).
- prefill BxT: one forward pass, logits at each row's last position.
- generate B: greedy, 200-token prompts + 64 new tokens (no stopping), base model on both sides.
- matmul: a bare bf16 1024x640 @ 640x2048 matmul, the peak the MFU figures are measured against.
- epoch B: a slice of an epoch of a real training mix (--epoch-data, default the cpu pipeline's
  sft_small rows): the peer trains batches of B rows in a seeded random order, each padded to its
  longest row (its usual dynamic padding); ours trains the same rows the way a run would, packed
  into rows of --epoch-pack tokens (`data.pack_length`), or with 0 our length-grouped padded
  buckets. The figure is useful (non-pad) tokens per second over --epoch-steps steps; our steps
  that compiled a new shape are left out of it and reported apart (a full epoch amortises them).

Ratios are peer time / our time (above 1: ours is faster), min / median / max over repetitions.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Gemma 3 270M: per position, the 18 layers' projections (q 640x1024, k and v 640x256,
# o 1024x640, gate/up/down 640x2048) hold 100.27M weights; the tied vocabulary projection 167.8M.
TRANSFORMER_WEIGHTS = 18 * (640 * 1024 + 2 * 640 * 256 + 1024 * 640 + 3 * 640 * 2048)
VOCAB_WEIGHTS = 262144 * 640
LAYERS, HEADS, HEAD_DIM = 18, 4, 256
MATMUL = (1024, 640, 2048)


def model_flops(task: str, batch: int, seq: int, loss_positions: int = 0) -> float:
    """Model FLOPs of one call (causal attention counted at its useful half). A LoRA step needs the
    frozen weights' input gradients but not their weight gradients: 2x the forward matmuls."""
    attn = 2 * 2 * HEADS * HEAD_DIM * LAYERS * (seq + 1) / 2  # QK^T and AV, per position
    fwd = batch * seq * (2 * TRANSFORMER_WEIGHTS + attn)
    if task == "train":
        return 2 * fwd + attn * batch * seq + 2 * 2 * VOCAB_WEIGHTS * loss_positions
    if task == "prefill":
        return fwd + 2 * VOCAB_WEIGHTS * batch
    raise ValueError(task)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)


# ----------------------------------------------------------------------------------------- inputs
def write_inputs(
    path: Path, train_shapes, prefill_shapes, gen_batches, rows_file: str, epoch_data: list[str] | None = None
) -> dict:
    """Token ids both sides use: training batches (our collate: right padding, gathered loss
    targets), prefill batches, generation prompts and the rows of a real training mix (epoch).
    Returns what each batch holds."""
    import numpy as np
    from hydra import compose, initialize_config_dir

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.data.batching import collate, tokenize_conversations
    from gemma_tool_use.data.conversations import load_jsonl_conversations
    from gemma_tool_use.model.loading import load_tokenizer_for
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=gemma3_270m"])
    tok = load_tokenizer_for(cfg.model)
    arrays, info = {}, {}
    rows = load_jsonl_conversations(rows_file)
    for b, t in train_shapes:
        ex = tokenize_conversations(rows, tok, max_length=t).examples
        batch = collate([ex[i % len(ex)] for i in range(b)], [t])
        for k, v in batch.items():
            arrays[f"train_{b}x{t}_{k}"] = v
        info[f"train {b}x{t}"] = {
            "real_tokens": int(batch["input_mask"].sum()),
            "positions": b * t,
            "loss_positions": int(batch["target_weights"].sum()),
        }
    text = "Tool-calling models read a list of functions and decide which one to call. " * 200
    ids = np.asarray(tok.encode(text, add_bos=True), np.int32)
    for b, t in prefill_shapes:
        arrays[f"prefill_{b}x{t}"] = np.stack([np.roll(ids[1 : t + 1], i) for i in range(b)]).astype(np.int32)
        arrays[f"prefill_{b}x{t}"][:, 0] = ids[0]
        info[f"prefill {b}x{t}"] = {"real_tokens": b * t, "positions": b * t}
    for b in gen_batches:
        p = np.stack([np.roll(ids[1:201], i) for i in range(b)]).astype(np.int32)
        p[:, 0] = ids[0]
        arrays[f"generate_{b}"] = p
        info[f"generate {b}"] = {"prompt_tokens": 200, "new_tokens": 64}
    if epoch_data:
        import tempfile

        from gemma_tool_use.data.prepare import prepare_training_data

        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            dcfg = compose("config", overrides=["model=gemma3_270m", *epoch_data])
        with tempfile.TemporaryDirectory() as tmp:
            train, _, _ = prepare_training_data(dcfg, tok, Path(tmp))
        ex = train.examples
        arrays["epoch_ids"] = np.concatenate([e.ids for e in ex]).astype(np.int32)
        arrays["epoch_loss_mask"] = np.concatenate([e.loss_mask for e in ex])
        arrays["epoch_offsets"] = np.cumsum([0] + [len(e) for e in ex])
        arrays["epoch_buckets"] = np.asarray(list(dcfg.data.length_buckets), np.int32)
        info["epoch"] = {
            "overrides": epoch_data,
            "rows": len(ex),
            "tokens": int(arrays["epoch_offsets"][-1]),
            "target_tokens": int(sum(int(e.loss_mask[1:].sum()) for e in ex)),
        }
    np.savez(path, **arrays)
    return info


def epoch_rows(data) -> list:
    from gemma_tool_use.format.render import RenderedConversation

    off = data["epoch_offsets"]
    return [
        RenderedConversation(data["epoch_ids"][a:b], data["epoch_loss_mask"][a:b]) for a, b in zip(off[:-1], off[1:])
    ]


# ------------------------------------------------------------------------------------ our worker
def time_calls(call, steps: int) -> list[float]:
    """Seconds of steps + 1 calls, the first one the warm-up."""
    times = []
    for _ in range(steps + 1):
        t1 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t1)
    return times


def ours_matmul() -> dict:
    import jax
    import jax.numpy as jnp

    m, k, n = MATMUL
    x, y = jnp.ones((m, k), jnp.bfloat16), jnp.ones((k, n), jnp.bfloat16)
    f = jax.jit(lambda a, c: a @ c)
    f(x, y).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(50):
        r = f(x, y)
    r.block_until_ready()
    return {"gflops": 2 * m * k * n / ((time.perf_counter() - t0) / 50) / 1e9}


def ours_epoch(cfg, model, data, b: int, t: int, steps: int) -> dict:
    """`steps` LoRA steps on the epoch rows as a run deals them (packed to t tokens, or padded
    buckets with t=0): per step its seconds, tokens, whether it compiled a new shape, its shape."""
    import jax

    from gemma_tool_use.data.batching import TokenizedSet, train_batches

    from bench_common import lora_train_step

    step = lora_train_step(cfg, model)
    batches = train_batches(
        TokenizedSet(epoch_rows(data)), b, list(map(int, data["epoch_buckets"])), seed=0, pack_length=t or None
    )
    seen, rec = set(), {"seconds": [], "tokens": [], "compiled": [], "shapes": []}
    for _ in range(steps):
        batch = next(batches)
        shape = tuple(batch["input_tokens"].shape) + (batch["target_positions"].shape[1],)
        t1 = time.perf_counter()
        jax.block_until_ready(step(batch)[0])
        rec["seconds"].append(time.perf_counter() - t1)
        rec["tokens"].append(int(batch["input_mask"].sum()))
        rec["compiled"].append(shape not in seen)
        rec["shapes"].append("x".join(map(str, shape)))
        seen.add(shape)
    return rec


def ours_call(task: str, cfg, model, data, b: int, t: int):
    """The call to time for a train, prefill or generate task (build it inside `with mesh:`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    if task == "train":
        from bench_common import lora_train_step

        batch = {
            k: data[f"train_{b}x{t}_{k}"]
            for k in ("input_tokens", "input_mask", "target_rows", "target_positions", "target_ids", "target_weights")
        }
        step = lora_train_step(cfg, model)
        return lambda: jax.block_until_ready(step(batch)[0])
    if task == "prefill":
        from tunix.sft import utils as sft_utils

        tokens = jnp.asarray(data[f"prefill_{b}x{t}"])
        mask = jnp.ones(tokens.shape, bool)
        last = jnp.full((b, 1), t - 1, jnp.int32)

        @nnx.jit
        def forward(model, tokens, mask, last):
            return model(
                tokens,
                sft_utils.build_positions_from_mask(mask),
                None,
                sft_utils.make_causal_attn_mask(mask),
                logits_at=last,
            )[0]

        return lambda: jax.block_until_ready(forward(model, tokens, mask, last))
    from gemma_tool_use.generation.generator import Generator, SamplingParams
    from gemma_tool_use.model.loading import load_tokenizer_for

    prompts = [list(map(int, r)) for r in data[f"generate_{b}"]]
    gen = Generator(model, load_tokenizer_for(cfg.model), batch_size=b, prompt_buckets=(256,), max_prompt_len=512)
    params = SamplingParams(max_new_tokens=64, stop_ids=(-1,))
    return lambda: gen.generate_ids(prompts, params)


def ours(task: str, b: int, t: int, inputs: Path, steps: int) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from bench_common import real_model

    if task == "matmul":
        return ours_matmul()
    data = np.load(inputs)
    overrides = [] if task in ("train", "epoch") else ["model.lora.enabled=false"]
    t0 = time.perf_counter()
    cfg, mesh, model = real_model(*overrides, training=task in ("train", "epoch"))
    load_s = time.perf_counter() - t0
    with mesh:
        if task == "epoch":
            return {"load_s": load_s, **ours_epoch(cfg, model, data, b, t, steps), "jax": jax.__version__}
        times = time_calls(ours_call(task, cfg, model, data, b, t), steps)
    from gemma_tool_use.model.gemma import count_params

    return {
        "load_s": load_s,
        "first_call_s": times[0],
        "seconds": times[1:],
        "jax": jax.__version__,
        **({"our_trainable_params": count_params(model, nnx.LoRAParam)} if task == "train" else {}),
    }


# ----------------------------------------------------------------------------------- peer worker
def peer_matmul() -> dict:
    import torch

    m, k, n = MATMUL
    x, y = torch.ones((m, k), dtype=torch.bfloat16), torch.ones((k, n), dtype=torch.bfloat16)
    x @ y
    t0 = time.perf_counter()
    for _ in range(50):
        x @ y
    return {"gflops": 2 * m * k * n / ((time.perf_counter() - t0) / 50) / 1e9}


def peer_lora(model):
    """(peft model, step, facts): LoRA on every attention and MLP projection, AdamW, and one
    training step on the real loss positions only."""
    import peft
    import torch

    model = peft.get_peft_model(
        model,
        peft.LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )
    model.train()
    facts = {
        "peft": peft.__version__,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=0.0)
    base = model.get_base_model()
    head = base.get_output_embeddings()

    def step(ids, mask, rows, pos, tgt):
        # the hidden states at the real loss positions only (flat, no padding slots), then the
        # vocabulary projection there: the leanest plain-PyTorch completion-only loss
        hidden = base.model(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = head(hidden[rows, pos]).float()
        loss = torch.nn.functional.cross_entropy(logits, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return model, step, facts


def peer_epoch(step, data, b: int, steps: int) -> dict:
    """`steps` steps on batches of b rows in a seeded random order, each padded to its longest row."""
    import numpy as np
    import torch

    off = data["epoch_offsets"]
    ids_all, lm_all = data["epoch_ids"], data["epoch_loss_mask"]
    order = np.random.default_rng(0).permutation(len(off) - 1)
    rec = {"seconds": [], "tokens": []}
    for s in range(steps):
        rows = order[s * b : (s + 1) * b]
        T = max(int(off[i + 1] - off[i]) for i in rows)
        targets = [np.nonzero(lm_all[off[i] : off[i + 1]][1:])[0] for i in rows]
        ids, mask = np.zeros((b, T), np.int64), np.zeros((b, T), np.int64)
        for r, i in enumerate(rows):
            seq = ids_all[off[i] : off[i + 1]]
            ids[r, : len(seq)], mask[r, : len(seq)] = seq, 1
        flat_rows = np.repeat(np.arange(b), [len(x) for x in targets])
        flat_pos = np.concatenate(targets)
        flat_tgt = ids[flat_rows, flat_pos + 1]
        t1 = time.perf_counter()
        step(*(torch.from_numpy(x) for x in (ids, mask, flat_rows, flat_pos, flat_tgt)))
        rec["seconds"].append(time.perf_counter() - t1)
        rec["tokens"].append(int(mask.sum()))
    return rec


def peer_train_call(step, data, b: int, t: int):
    """One step on the shared training batch, at its real (weighted) loss positions only."""
    import torch

    w = data[f"train_{b}x{t}_target_weights"] > 0
    rows = data[f"train_{b}x{t}_target_rows"][w]
    ids, mask, pos, tgt = (
        torch.from_numpy(data[f"train_{b}x{t}_{k}"]).long()
        for k in ("input_tokens", "input_mask", "target_positions", "target_ids")
    )
    flat = [torch.from_numpy(rows).long(), pos[torch.from_numpy(w)], tgt[torch.from_numpy(w)]]
    return lambda: step(ids, mask, *flat)


def peer_infer_call(task: str, model, data, b: int, t: int):
    """A prefill (logits at the last position) or a greedy 64-token generation."""
    import torch

    model.eval()
    if task == "prefill":
        ids = torch.from_numpy(data[f"prefill_{b}x{t}"]).long()

        def call():
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1).logits
    else:
        ids = torch.from_numpy(data[f"generate_{b}"]).long()

        def call():
            with torch.inference_mode():
                return model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=64,
                    min_new_tokens=64,
                    do_sample=False,
                )

    return call


def peer(task: str, b: int, t: int, inputs: Path, steps: int, hf_dir: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count())
    if task == "matmul":
        return peer_matmul()
    import transformers
    from transformers import AutoModelForCausalLM

    data = np.load(inputs)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16, attn_implementation="sdpa")
    load_s = time.perf_counter() - t0
    extra = {"torch": torch.__version__, "transformers": transformers.__version__}
    if task in ("train", "epoch"):
        model, step, facts = peer_lora(model)
        extra.update(facts)
        if task == "epoch":
            return {"load_s": load_s, **peer_epoch(step, data, b, steps), **extra}
        call = peer_train_call(step, data, b, t)
    else:
        call = peer_infer_call(task, model, data, b, t)
    times = time_calls(call, steps)
    return {"load_s": load_s, "first_call_s": times[0], "seconds": times[1:], **extra}


# ---------------------------------------------------------------------------------------- driver
def parse_shape(s: str) -> tuple[int, int]:
    b, t = s.lower().split("x")
    return int(b), int(t)


def worker_command(
    python: str, side: str, task: str, b: int, t: int, inputs: Path, steps: int, hf_dir: str | None = None
) -> list[str]:
    """The command line of one worker process of this script (also run by bench_malloc_speed
    and bench_xla_flags)."""
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--task", task, "--b", str(b), "--t", str(t)]
    cmd += ["--inputs", str(inputs), "--steps", str(steps)]
    return cmd + (["--hf-dir", hf_dir] if hf_dir is not None else [])


def spawn(python: str, side: str, task: str, b: int, t: int, inputs: Path, steps: int, hf_dir: str) -> dict:
    cmd = worker_command(python, side, task, b, t, inputs, steps, hf_dir)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{side} {task} {b}x{t} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def split_overrides(text: str) -> list[str]:
    """'a=1,b=[2,3]' -> ['a=1', 'b=[2,3]']: commas inside brackets stay."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{" and 1 or ch in "]}" and -1 or 0
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + ([cur] if cur else [])


def epoch_rate(r: dict) -> float:
    """Useful tokens per second of an epoch slice, leaving out warm-up: our steps that compiled a
    new shape, the peer's first step."""
    keep = [i for i in range(len(r["seconds"])) if not (r["compiled"][i] if "compiled" in r else i == 0)]
    return round(sum(r["tokens"][i] for i in keep) / max(sum(r["seconds"][i] for i in keep), 1e-9), 1)


def spread(xs) -> dict:
    return {"min": round(min(xs), 3), "median": round(statistics.median(xs), 3), "max": round(max(xs), 3)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", choices=["ours", "peer"])
    ap.add_argument("--task", choices=["train", "prefill", "generate", "matmul", "epoch"])
    ap.add_argument("--b", type=int)
    ap.add_argument("--t", type=int)
    ap.add_argument("--inputs")
    ap.add_argument("--hf-dir")
    ap.add_argument("--steps", type=int, default=3, help="timed calls per process, after one warm-up call")
    ap.add_argument("--peer-python", default=sys.executable, help="an interpreter with torch, transformers, peft")
    ap.add_argument("--train", default="4x256,8x1024", help="LoRA step shapes, BxT, comma-separated ('' for none)")
    ap.add_argument("--prefill", default="4x256")
    ap.add_argument("--generate", default="8,16", help="generation batch sizes")
    ap.add_argument("--reps", type=int, default=2, help="processes per side and task, interleaved")
    ap.add_argument("--rows", default="tiny/train.jsonl", help="conversations for the training batches")
    ap.add_argument("--epoch", default="", help="epoch-slice batch sizes ('' for none), e.g. 8")
    ap.add_argument("--epoch-pack", default="768,0", help="our data.pack_length per epoch run (0: padded buckets)")
    ap.add_argument("--epoch-steps", type=int, default=12)
    ap.add_argument(
        "--epoch-data",
        default="data=sft_small,data.max_length=768,data.length_buckets=[256,512,768],data.augment.near_miss=0.35",
        help="config overrides naming the mix (the cpu pipeline's sft_small)",
    )
    ap.add_argument("--out")
    return ap


def run_worker(args) -> None:
    """One measurement in this process; its result (and peak RSS) as the last stdout line."""
    fn = ours if args.worker == "ours" else peer
    kw = {} if args.worker == "ours" else {"hf_dir": args.hf_dir}
    out = fn(args.task, args.b, args.t, Path(args.inputs) if args.inputs else None, args.steps, **kw)
    out["peak_rss_gib"] = rss_gib()
    print(json.dumps(out))


def key_of(task, b, t):
    """The results key of a task: 'matmul', 'train 4x256', 'generate 8', 'epoch 8 pack 768'."""
    return {
        "matmul": "matmul",
        "generate": f"generate {b}",
        "epoch": f"epoch {b} {'pack ' + str(t) if t else 'padded buckets'}",
    }.get(task, f"{task} {b}x{t}")


def run_tasks(args, tasks, inputs: Path, hf_dir: str, t_start: float) -> dict:
    """Every task on both sides, --reps times, alternating who goes first; key -> side -> results."""
    runs = {key_of(*task): {"ours": [], "peer": []} for task in tasks}
    peer_epoch_runs = {}  # (b, rep) -> the peer's epoch run: one serves every variant of ours
    for rep in range(args.reps):
        for task, b, t in tasks:
            key = key_of(task, b, t)
            sides = ("ours", "peer") if rep % 2 == 0 else ("peer", "ours")  # alternate who goes first
            for side in sides:
                python = sys.executable if side == "ours" else args.peer_python
                steps = args.epoch_steps if task == "epoch" else args.steps
                if task == "epoch" and side == "peer" and (b, rep) in peer_epoch_runs:
                    runs[key][side].append(peer_epoch_runs[b, rep])
                    continue
                r = spawn(python, side, task, b, t, inputs, steps, hf_dir)
                if task == "epoch" and side == "peer":
                    peer_epoch_runs[b, rep] = r
                runs[key][side].append(r)
                if task == "epoch":
                    r["useful_tokens_per_s"] = epoch_rate(r)
                shown = r.get("gflops") or r.get("useful_tokens_per_s") or statistics.median(r["seconds"])
                print(
                    f"[rep {rep + 1}/{args.reps}, {time.time() - t_start:6.0f} s] {key:14s} {side}: "
                    f"{shown:.3f} {'GFLOP/s' if task == 'matmul' else 'useful tok/s' if task == 'epoch' else 's'}, peak {r['peak_rss_gib']:.2f} GiB",
                    flush=True,
                )
    return runs


def epoch_row(sides: dict) -> dict:
    """An epoch slice's row: useful tokens/s, peak RSS, our compiles, tokens per step, ours/peer ratio."""
    rate = {s: [r["useful_tokens_per_s"] for r in sides[s]] for s in ("ours", "peer")}
    row = {
        s: {"useful_tokens_per_s": spread(rate[s]), "peak_rss_gib": round(max(r["peak_rss_gib"] for r in sides[s]), 2)}
        for s in ("ours", "peer")
    }
    row["ours"]["compiles"] = [sum(r["compiled"]) for r in sides["ours"]]
    row["ours"]["compile_step_seconds"] = [
        round(sum(x for x, c in zip(r["seconds"], r["compiled"]) if c), 1) for r in sides["ours"]
    ]
    row["ours"]["tokens_per_step"] = round(statistics.mean(x for r in sides["ours"] for x in r["tokens"]), 1)
    row["peer"]["tokens_per_step"] = round(statistics.mean(x for r in sides["peer"] for x in r["tokens"]), 1)
    row["ratio_ours_over_peer"] = spread([o / p for o, p in zip(rate["ours"], rate["peer"])])
    return row


def timed_row(key: str, sides: dict, info: dict, peak: float) -> dict:
    """A train, prefill or generate row: seconds, peak RSS, peer/ours ratio, and tokens/s (plus MFU
    against the matmul peak for train and prefill)."""
    task = key.split()[0]
    med = {s: [statistics.median(r["seconds"]) for r in sides[s]] for s in ("ours", "peer")}
    row = {
        s: {"seconds": spread(med[s]), "peak_rss_gib": round(max(r["peak_rss_gib"] for r in sides[s]), 2)}
        for s in ("ours", "peer")
    }
    row["ratio_peer_over_ours"] = spread([p / o for p, o in zip(med["peer"], med["ours"])])
    if task in ("train", "prefill"):
        b, t = parse_shape(key.split()[1])
        flops = model_flops(task, b, t, info[key].get("loss_positions", 0))
        for s in ("ours", "peer"):
            row[s]["real_tokens_per_s"] = round(info[key]["real_tokens"] / statistics.median(med[s]), 1)
            row[s]["mfu_vs_matmul_peak"] = round(flops / statistics.median(med[s]) / (peak * 1e9), 3)
    else:
        b = int(key.split()[1])
        for s in ("ours", "peer"):
            row[s]["new_tokens_per_s"] = round(b * 64 / statistics.median(med[s]), 1)
    return row


def results_table(runs: dict, info: dict) -> tuple[dict, float]:
    """(the results table, the matmul peak in GFLOP/s: the higher side's median)."""
    peak = max(statistics.median(r["gflops"] for r in runs["matmul"][s]) for s in ("ours", "peer"))
    table = {"matmul": {s: spread([r["gflops"] for r in runs["matmul"][s]]) for s in ("ours", "peer")}}
    for key, sides in runs.items():
        if key == "matmul":
            continue
        table[key] = epoch_row(sides) if key.split()[0] == "epoch" else timed_row(key, sides, info, peak)
    return table, peak


def main():
    ap = build_parser()
    args = ap.parse_args()

    if args.worker:
        run_worker(args)
        return

    if not args.out:
        ap.error("--out is required")
    from gemma_tool_use.model.weights import converted_gguf_dir

    hf_dir = str(converted_gguf_dir())
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    inputs = out_path.with_suffix(".inputs.npz")
    train = [parse_shape(s) for s in args.train.split(",") if s]
    prefill = [parse_shape(s) for s in args.prefill.split(",") if s]
    gen = [int(s) for s in args.generate.split(",") if s]
    epoch = [int(s) for s in args.epoch.split(",") if s]
    epoch_data = [s for s in split_overrides(args.epoch_data)] if epoch else None
    info = write_inputs(inputs, train, prefill, gen, args.rows, epoch_data)
    tasks = (
        [("matmul", 0, 0)]
        + [("train", b, t) for b, t in train]
        + [("prefill", b, t) for b, t in prefill]
        + [("generate", b, 200) for b in gen]
        + [("epoch", b, int(p)) for b in epoch for p in args.epoch_pack.split(",")]
    )

    t_start = time.time()
    runs = run_tasks(args, tasks, inputs, hf_dir, t_start)
    table, peak = results_table(runs, info)
    versions = {
        k: v
        for s in ("ours", "peer")
        for r in runs[next(k for k in runs if k != "matmul")][s][:1]
        for k, v in r.items()
        if k in ("jax", "torch", "transformers", "peft", "trainable_params", "our_trainable_params")
    }
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "inputs": info,
        "results": table,
        "matmul_peak_gflops": round(peak, 1),
        "versions": versions,
        "raw": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "wall_s": round(time.time() - t_start, 1),
    }
    out_path.write_text(json.dumps(report, indent=2))
    inputs.unlink()  # derived token ids (MBs): the command rebuilds them
    print(json.dumps({k: report[k] for k in ("results", "matmul_peak_gflops", "versions")}, indent=2))


if __name__ == "__main__":
    main()
