"""Stage 5's loop on the tiny model: rollouts always come from the current weights, a resumed run
equals a straight one, a learnable toy reward rises (the CLI run from an SFT result, loaded by
predict: tests/test_pipeline.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

TINY_GRPO = [
    "model=tiny",
    "data=tiny",
    "model.train_token_ids=[105,106]",
    "grpo.num_generations=4",
    "grpo.prompts_per_step=2",
    "grpo.max_new_tokens=8",
    "grpo.max_prompt_len=512",
    "grpo.probe_size=4",
    "grpo.probe_every_steps=2",
    "grpo.no_call_share=0.5",
    "train.checkpoint_every_steps=1",
    "tracking.mode=disabled",
]


def compose(overrides):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gemma_tool_use.config.schema import register_configs
    from gemma_tool_use.utils.paths import conf_dir

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("config", overrides=["stage=grpo", *TINY_GRPO, *overrides])


def ascii_share(prompts, completions, **_):
    """A toy reward the tiny random model can learn: the share of ASCII characters it writes."""
    return [sum(ch.isascii() for ch in c) / max(1, len(c)) for c in completions]


def tiny_prompts(tokenizer, cfg):
    from gemma_tool_use.training.grpo.rollouts import build_prompt_set, prompt_rows

    rows, _ = prompt_rows(cfg.data, 0)
    return build_prompt_set(
        rows, tokenizer, system_prompt=None, max_prompt_len=512, categories=set(cfg.grpo.categories)
    )


def run_loop(tmp_path, tokenizer, overrides, reward_fns, *, spy=None):
    from flax import nnx

    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.training.grpo.grpo_loop import train
    from gemma_tool_use.training.grpo.rollouts import probe_prompts
    from gemma_tool_use.utils.mesh import build_mesh
    from gemma_tool_use.utils.tracking import Tracker

    cfg = compose(overrides)
    mesh = build_mesh(cfg.tpu)
    prompt_set = tiny_prompts(tokenizer, cfg)
    probe = probe_prompts(prompt_set, 4, 0.5, 0)
    with Tracker(tmp_path, cfg.tracking, {}) as tracker, mesh:
        model = build_model(cfg.model, mesh, 0)
        if spy:
            spy(model)
        summary = train(cfg, model, tokenizer, prompt_set, probe, reward_fns, tmp_path, tracker)
        lora = [np.asarray(x) for x in __import__("jax").tree.leaves(nnx.state(model, nnx.LoRAParam))]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return summary, [r for r in records if "reward/total_mean" in r], lora


def test_a_generator_holding_a_snapshot_is_caught_and_sync_fixes_it(tokenizer):
    """What the stale-policy guard below detects: a generator holding a snapshot of the weights
    (an nnx.split copy, a rollout engine with its own params) no longer matches after an update."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from gemma_tool_use.generation.generator import Generator
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    cfg = compose([])
    model = build_model(cfg.model, build_mesh(cfg.tpu), 0)
    gen = Generator(model, tokenizer, batch_size=2)
    assert holds_current_adapters(gen, model)
    gen.state = jax.tree.map(jnp.copy, gen.state)  # a snapshot
    nnx.update(model, jax.tree.map(lambda x: x + 1.0, nnx.state(model, nnx.LoRAParam)))
    assert not holds_current_adapters(gen, model)
    gen.sync(model)
    assert holds_current_adapters(gen, model)


def holds_current_adapters(gen, model) -> bool:
    import jax
    from flax import nnx

    held = jax.tree.leaves(nnx.state(nnx.merge(gen.graphdef, gen.state), nnx.LoRAParam))
    return all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)), held)
    )


def test_resume_equals_a_straight_run(tmp_path, tokenizer):
    """2 steps, stop, 1 more (same run dir) == 3 straight steps: same prompts, same samples, same
    rewards and losses, same final adapters."""
    rewards = [("ascii", 1.0, ascii_share)]
    common = [
        "optim.lr=1e-2",
        "grpo.max_new_tokens=4",
        "grpo.num_generations=2",
        "grpo.probe_size=2",
        "grpo.micro_batch_size=3",
    ]  # 4 rows: micro-batches of 3 + 1 (padded), across the kill too
    _, straight, straight_lora = run_loop(tmp_path / "a", tokenizer, ["train.max_steps=3", *common], rewards)
    run_loop(tmp_path / "b", tokenizer, ["train.max_steps=2", *common], rewards)
    summary, resumed, resumed_lora = run_loop(tmp_path / "b", tokenizer, ["train.max_steps=3", *common], rewards)
    assert summary["resumed_from_step"] == 2
    assert [r["step"] for r in resumed] == [1, 2, 3]  # one line per step
    for a, b in zip(straight, resumed):
        assert a["reward/total_mean"] == pytest.approx(b["reward/total_mean"], abs=1e-6), a["step"]
        assert a.get("train/loss") == pytest.approx(b.get("train/loss"), abs=1e-5), a["step"]
    assert all(np.allclose(a, b, atol=1e-6) for a, b in zip(straight_lora, resumed_lora))


def test_mean_reward_rises_on_a_learnable_toy_reward_sampling_the_current_policy(tmp_path, tokenizer, monkeypatch):
    """10 steps on a toy reward the tiny model can learn: the mean reward rises (it reaches 1.0
    near step 11 at this lr). Every rollout (and probe) is generated from exactly the model's
    current adapters (the stale-policy guard)."""
    from gemma_tool_use.generation.generator import Generator

    seen, holder = [], {}
    original = Generator.generate_ids

    def checked(self, prompts, params=None, progress=None):
        seen.append(holds_current_adapters(self, holder["model"]))
        return original(self, prompts, params, progress)

    monkeypatch.setattr(Generator, "generate_ids", checked)
    _, records, _ = run_loop(
        tmp_path,
        tokenizer,
        [
            "train.max_steps=10",
            "optim.lr=3e-2",
            "grpo.prompts_per_step=4",
            "grpo.no_call_share=0.0",
            "grpo.probe_every_steps=5",
            "train.checkpoint_every_steps=5",  # saving is not under test here
        ],
        [("ascii", 1.0, ascii_share)],
        spy=lambda m: holder.setdefault("model", m),
    )
    assert len(seen) >= 10 and all(seen), seen
    rewards = [r["reward/total_mean"] for r in records]
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert last > first + 0.1, rewards


def test_groups_to_train_takes_the_first_with_spread_up_to_the_limit():
    from gemma_tool_use.training.grpo.grpo_loop import groups_to_train

    flat = np.array([True, False, True, False, False, False])
    assert groups_to_train(flat, 2, True).tolist() == [False, True, False, True, False, False]
    assert groups_to_train(flat, 6, True).tolist() == (~flat).tolist()
    assert groups_to_train(flat, 2, False).tolist() == [True, True, False, False, False, False]
    assert not groups_to_train(np.ones(3, bool), 2, True).any()  # all flat: nothing to train


@pytest.mark.parametrize(
    "overrides",
    [["grpo.draw_prompts_per_step=1"], ["grpo.draw_prompts_per_step=4", "grpo.drop_zero_variance_groups=false"]],
)
def test_draw_prompts_per_step_is_checked(overrides):
    from gemma_tool_use.config.checks import check_config
    from gemma_tool_use.utils.errors import UserError

    with pytest.raises(UserError, match=r"grpo\.draw_prompts_per_step"):
        check_config(compose(overrides))


def test_dynamic_sampling_draws_more_prompts_and_trains_at_most_prompts_per_step_groups(tmp_path, tokenizer):
    """grpo.draw_prompts_per_step=4 with prompts_per_step=2: 4 groups rolled out per step, at most 2
    (with reward spread) in each update."""
    summary, records, _ = run_loop(
        tmp_path,
        tokenizer,
        ["train.max_steps=2", "grpo.draw_prompts_per_step=4", "grpo.max_new_tokens=4", "grpo.probe_size=2"],
        [("ascii", 1.0, ascii_share)],
    )
    assert summary["groups"] == 8 and summary["groups_trained"] <= 4
    assert [r["groups/trained"] for r in records] and all(r["groups/trained"] <= 2 for r in records)
    assert summary["groups_trained"] == sum(r["groups/trained"] for r in records)
    # each update took min(2, the groups with spread among the 4 drawn)
    spread = [round(4 * (1 - r["groups/zero_variance_share"])) for r in records]
    assert [r["groups/trained"] for r in records] == [min(2, n) for n in spread]
