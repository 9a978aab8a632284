"""Batched KV-cache generation equals naive step-by-step decoding; policies and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.generation.generator import GenerationError, Generator, SamplingParams
from gemma_tool_use.utils.paths import conf_dir

register_configs()


@pytest.fixture(scope="module")
def tiny_model():
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        # sliding window 16 so that prompts + generation cross it
        cfg = compose(
            "config", overrides=["model=tiny", "model.arch.sliding_window_size=16", "model.lora.enabled=false"]
        )
    return build_model(cfg.model, build_mesh(cfg.tpu), 0)


@pytest.fixture(scope="module")
def lively_model(tiny_model):
    """The tiny model with its post-attention/post-MLP norms scaled up: the random model
    otherwise echoes its last input token, and its tokens must depend on the context (the cache)
    for decoding tests to mean anything."""
    graphdef, state = nnx.split(tiny_model)

    def boost(path, x):
        name = "/".join(str(p) for p in path)
        return x + 30.0 if ("post_" in name and "norm" in name) else x

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(boost, state))


_NAIVE = {}


def naive_greedy(model, ids, n, width=96):
    """Reference decoding: recompute the whole (right-padded, causal) sequence every step."""
    if id(model) not in _NAIVE:
        graphdef, state = nnx.split(model)

        @jax.jit
        def next_token(state, tokens, last):
            m = nnx.merge(graphdef, state)
            logits, _ = m(
                tokens,
                jnp.arange(width)[None],
                None,
                jnp.tril(jnp.ones((1, width, width), bool)),
                logits_at=last[None, None],
            )
            return jnp.argmax(logits[0, -1])

        _NAIVE[id(model)] = (next_token, state)
    next_token, state = _NAIVE[id(model)]
    ids = list(ids)
    out = []
    for _ in range(n):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(ids)] = ids
        nxt = int(next_token(state, tokens, jnp.int32(len(ids) - 1)))
        out.append(nxt)
        ids.append(nxt)
    return out


PROMPTS = [[2, 10, 11, 12], [2] + list(range(100, 130)), [2, 7], [2] + list(range(300, 320))]


@pytest.mark.parametrize("refill", [False, True])
def test_batched_greedy_equals_naive_decoding(lively_model, tokenizer, refill):
    tiny_model = lively_model
    gen = Generator(tiny_model, tokenizer, batch_size=3, prompt_buckets=(8, 32), max_prompt_len=64, refill=refill)
    params = SamplingParams(max_new_tokens=12, stop_ids=(-1,))  # never stop early
    results = gen.generate_ids(PROMPTS, params)
    for p, r in zip(PROMPTS, results):
        assert r.token_ids == naive_greedy(tiny_model, p, 12), p
        assert r.stop_reason == "length" and r.prompt_tokens == len(p)
    if not refill:  # 4 prompts in 2 length buckets, batches of <= 3: two programs, not four
        assert gen.compiled_shapes == {(3, 8, 12), (3, 32, 12)}
    else:  # one stream per bucket (2 slots each: as many as its prompts), one decode program each
        assert {s for s in gen.compiled_shapes if s[0] == "decode"} == {
            ("decode", 2, 8 + 24, 12),
            ("decode", 2, 32 + 24, 12),
        }


def test_refilled_rows_equal_static_batches(lively_model, tokenizer):
    """Continuous batching: rows that stop early free their slot for waiting prompts, columns
    are shifted left as the write column advances, and every row still gets exactly the tokens
    of plain static batching; results stream out in finishing order through on_result."""
    rng = np.random.default_rng(0)
    prompts = [[2] + rng.integers(10, 400, size=int(n)).tolist() for n in rng.integers(3, 30, size=11)]
    model = lively_model
    free = Generator(
        model, tokenizer, batch_size=8, prompt_buckets=(32,), max_prompt_len=32, refill=False
    ).generate_ids(prompts, SamplingParams(max_new_tokens=10, stop_ids=(-1,)))
    # stop on tokens that rows emit at different steps (or never): uneven lengths
    stops = tuple({free[i].token_ids[2 + i % 7] for i in range(0, len(prompts), 3)})
    params = SamplingParams(max_new_tokens=10, stop_ids=stops)
    static = Generator(
        model, tokenizer, batch_size=3, prompt_buckets=(32,), max_prompt_len=32, refill=False
    ).generate_ids(prompts, params)
    order = []
    gen = Generator(model, tokenizer, batch_size=3, prompt_buckets=(32,), max_prompt_len=32, refill=True)
    streamed = gen.generate_ids(prompts, params, on_result=lambda g: order.append(g.index))
    assert len({len(r.token_ids) for r in static}) > 2 and any(r.stop_reason == "stop" for r in static)
    for a, b, p in zip(static, streamed, prompts):
        assert (a.token_ids, a.stop_reason, a.stop_id) == (b.token_ids, b.stop_reason, b.stop_id), p
        assert b.token_ids == naive_greedy(model, p, len(b.token_ids))
    assert sorted(order) == list(range(len(prompts))) and order != sorted(order, key=lambda i: len(prompts[i]))
    assert any(s[0] == "refill" and s[1] < 4 for s in gen.compiled_shapes)  # partial refills happened


def test_stops_at_stop_ids(tiny_model, tokenizer):
    gen = Generator(tiny_model, tokenizer, batch_size=4, prompt_buckets=(8, 32), max_prompt_len=64)
    free = gen.generate_ids(PROMPTS[:1], SamplingParams(max_new_tokens=8, stop_ids=(-1,)))[0].token_ids
    stop = free[3]
    r = gen.generate_ids(PROMPTS[:1], SamplingParams(max_new_tokens=8, stop_ids=(stop,)))[0]
    assert r.token_ids == free[: free.index(stop)] and r.stop_reason == "stop"


def test_sampling_is_seeded_and_top_k_1_is_greedy(tiny_model, tokenizer):
    gen = Generator(tiny_model, tokenizer, batch_size=4, prompt_buckets=(8, 32), max_prompt_len=64)
    s = dict(max_new_tokens=10, stop_ids=(-1,))
    a = gen.generate_ids(PROMPTS, SamplingParams(temperature=1.0, seed=3, **s))
    b = gen.generate_ids(PROMPTS, SamplingParams(temperature=1.0, seed=3, **s))
    c = gen.generate_ids(PROMPTS, SamplingParams(temperature=1.0, seed=4, **s))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    greedy = gen.generate_ids(PROMPTS, SamplingParams(**s))
    topk1 = gen.generate_ids(PROMPTS, SamplingParams(temperature=0.7, top_k=1, seed=9, **s))
    assert [r.token_ids for r in greedy] == [r.token_ids for r in topk1]
    tiny_p = gen.generate_ids(PROMPTS, SamplingParams(temperature=1.0, top_p=1e-6, seed=9, **s))
    assert [r.token_ids for r in greedy] == [r.token_ids for r in tiny_p]


def test_overlength_policies(tiny_model, tokenizer):
    long = [2] + list(range(10, 80))  # 71 tokens > 64
    with pytest.raises(GenerationError, match="prompt 1 has 71 tokens > max_prompt_len=64"):
        Generator(tiny_model, tokenizer, max_prompt_len=64, prompt_buckets=(32,)).generate_ids(
            [PROMPTS[0], long], SamplingParams(max_new_tokens=2)
        )
    skip = Generator(tiny_model, tokenizer, max_prompt_len=64, prompt_buckets=(32,), overlength="skip")
    r = skip.generate_ids([PROMPTS[0], long], SamplingParams(max_new_tokens=2))
    assert r[1].stop_reason == "skipped_overlength" and r[0].stop_reason != "skipped_overlength"
    trunc = Generator(tiny_model, tokenizer, max_prompt_len=64, prompt_buckets=(32,), overlength="truncate_left")
    r = trunc.generate_ids([long], SamplingParams(max_new_tokens=3, stop_ids=(-1,)))[0]
    assert r.truncated_prompt and r.prompt_tokens == 64
    assert r.token_ids == naive_greedy(tiny_model, [2] + long[-63:], 3)


def test_works_with_lora_model(tokenizer):
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "model.train_token_ids=[]"])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    r = Generator(model, tokenizer, prompt_buckets=(8,), max_prompt_len=16).generate_ids(
        [PROMPTS[0]], SamplingParams(max_new_tokens=4, stop_ids=(-1,))
    )[0]
    assert r.token_ids == naive_greedy(model, PROMPTS[0], 4)


@pytest.mark.parametrize("remat", ["block", "decoder"])
def test_a_model_trained_with_remat_generates_and_keeps_its_remat(tokenizer, remat):
    """model.remat is for training; sampling from such a model (BFCL after SFT, GRPO rollouts)
    once failed inside the decode loop with nnx's TraceContextError."""
    from tunix.models.gemma3.model import RematConfig

    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    outs = {}
    for setting in ("none", remat):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=["model=tiny", f"model.remat={setting}"])
        model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
        for refill in (False, True):
            gen = Generator(model, tokenizer, batch_size=2, prompt_buckets=(8, 32), max_prompt_len=64, refill=refill)
            outs[setting, refill] = [
                r.token_ids for r in gen.generate_ids(PROMPTS[:3], SamplingParams(max_new_tokens=5, stop_ids=(-1,)))
            ]
        gen.sync(model)  # the trainer's graph (with remat) is the one sync accepts
        assert model.config.remat_config == RematConfig[remat.upper()] or setting == "none"
    assert outs[remat, False] == outs["none", False]
    assert outs[remat, True] == outs["none", True]


def test_from_config_reads_the_generation_group_and_takes_overrides(tiny_model, tokenizer):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "model=tiny",
                "generation.batch_size=3",
                "generation.max_prompt_len=300",
                "generation.prompt_buckets=[64,128]",
                "generation.refill=true",
                "generation.max_batch_tokens=4096",
                "generation.overlength=truncate_left",
            ],
        )
    gen = Generator.from_config(tiny_model, tokenizer, cfg.generation)
    assert (gen.batch_size, gen.max_prompt_len, gen.buckets, gen.max_batch_tokens, gen.overlength) == (
        3,
        300,
        (64, 128, 300),
        4096,
        "truncate_left",
    )
    assert gen.refill is True
    gen = Generator.from_config(tiny_model, tokenizer, cfg.generation, batch_size=5, overlength="skip", refill=False)
    assert (gen.batch_size, gen.overlength, gen.refill, gen.max_prompt_len) == (5, "skip", False, 300)
    with pytest.raises(TypeError, match="max_new_tokens"):
        Generator.from_config(tiny_model, tokenizer, cfg.generation, max_new_tokens=4)
