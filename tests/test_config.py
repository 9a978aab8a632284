"""Every group option and experiment composes; bad configs fail fast naming the key; the figures an
experiment config states in its `# Result:` comment are the ones its recorded summaries hold."""

import json
import re
from dataclasses import dataclass

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from gemma_tool_use.config.checks import ConfigValueError, check_config
from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.evaluation.bfcl_tables import irrelevance_split
from gemma_tool_use.utils.files import read_jsonl
from gemma_tool_use.utils.paths import conf_dir, experiments_dir

from conftest import REPO, run_cli

register_configs()
GROUPS = ("model", "data", "stage", "tpu", "tracking")


def _compose(overrides=()):
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def group_options():
    for group in GROUPS:
        for f in sorted((conf_dir() / group).glob("*.yaml")):
            yield group, f.stem


def experiment_names():
    return sorted(p.stem for p in experiments_dir().glob("*.yaml"))


def test_config_locations_are_the_repo():
    assert conf_dir() == REPO / "conf" and experiments_dir() == REPO / "experiments"


@pytest.mark.parametrize("group,option", list(group_options()))
def test_every_group_option_composes(group, option):
    cfg = _compose([f"{group}={option}"])
    assert cfg[group] is not None
    if group != "tracking":
        assert cfg[group].name == option
    check_config(cfg)


def test_there_are_experiments():
    assert "tiny_smoke" in experiment_names()


@pytest.mark.parametrize("name", experiment_names())
def test_every_experiment_composes(name):
    cfg = _compose([f"experiments={name}"])
    check_config(cfg)
    text = (experiments_dir() / f"{name}.yaml").read_text()
    assert "Run:" in text, "an experiment config says how to run it"
    assert result_comment(name), "an experiment config says what result it gave (# Result:)"


# ------------------------------------------------------- Result: comments vs recorded summaries
#
# RESULT_CLAIMS lists, per experiment with recorded results under experiments/, the phrases of its
# `# Result:` comment that state figures: `{}` stands for a stated number, and each comes with the
# recorded value it must equal within the rounding it is written with (40.25: +-0.005, 0.37:
# +-0.005, 98: +-0.5). A list of values means every one of them must round to the figure. Every
# digit of the comment (outside paths) must fall inside a listed phrase, so a changed or added
# figure fails until it is checked here. `context(...)` phrases carry digits that are not results
# (hardware, hyperparameters) or results no summary records; they are named, not compared.

NUMBER = r"(\d+(?:\.\d+)?)"


@dataclass
class Claim:
    template: str
    values: tuple = ()
    why: str = ""

    @property
    def regex(self) -> re.Pattern:
        return re.compile(NUMBER.join(re.escape(part) for part in self.template.split("{}")))


def fig(template: str, *values) -> Claim:
    assert template.count("{}") == len(values), template
    return Claim(template, values)


def context(phrase: str, why: str = "not a result") -> Claim:
    return Claim(phrase, why=why)


def result_comment(name: str) -> str:
    """The `# Result:` comment of experiments/<name>.yaml (to the end of its comment block), one line."""
    lines = (experiments_dir() / f"{name}.yaml").read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("# Result:")), None)
    if start is None:
        return ""
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line.lstrip("#"))
    return " ".join(" ".join(block).split()).removeprefix("Result:").strip()


def recorded(rel: str):
    """A recorded file under experiments/: JSON, or JSONL through the project's one reader."""
    path = experiments_dir() / rel
    return read_jsonl(path) if path.suffix == ".jsonl" else json.loads(path.read_text())


def recorded_summaries(name: str) -> list[str]:
    folder = experiments_dir() / name
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*summary*.json")) if folder.is_dir() else []


def pct(summary: dict, category: str) -> float:
    return 100 * summary["categories"][category]["accuracy"]


def right(summary: dict, *categories: str) -> tuple[int, int]:
    """(correct, total) over BFCL categories of an evaluation summary."""
    cats = [summary["categories"][c] for c in categories]
    return sum(c["correct"] for c in cats), sum(c["total_count"] for c in cats)


def first_val_loss(metrics: list[dict]) -> float:
    return next(r["eval/loss"] for r in metrics if r.get("step") == 0 and "eval/loss" in r)


def sweep_job(rel: str, **overrides: str) -> dict:
    """The one job of a sweep_summary.json with these overrides (dots in keys written as __)."""
    want = {k.replace("__", "."): v for k, v in overrides.items()}
    jobs = [j for j in recorded(rel)["jobs"] if all(j["overrides"].get(k) == v for k, v in want.items())]
    assert len(jobs) == 1, (rel, want, jobs)
    return jobs[0]


def claims_bfcl_baseline_base():
    s = recorded("bfcl_baseline_base/summary.json")
    ast = [c for c in s["categories"] if c != "irrelevance"]
    return [
        fig("non-live AST {}% ({}/{}:", 100 * s["aggregates"]["non_live"], *right(s, *ast)),
        fig("irrelevance {}% ({}/{},", pct(s, "irrelevance"), *right(s, "irrelevance")),
        fig("{} min on the 2-core CPU", s["total_seconds"] / 60),
    ]


def claims_sft_small_gemma3_270m():
    base, s = recorded("bfcl_baseline_base/summary.json"), recorded("sft_small_gemma3_270m/bfcl_eval/summary.json")
    t = recorded("sft_small_gemma3_270m/train_summary.json")
    return [
        fig(
            "BFCL non-live {} -> {} (simple_python {}, java {}, javascript {}, multiple {}, parallel {}, "
            "parallel_multiple {})",
            100 * base["aggregates"]["non_live"],
            100 * s["aggregates"]["non_live"],
            *(
                pct(s, c)
                for c in (
                    "simple_python",
                    "simple_java",
                    "simple_javascript",
                    "multiple",
                    "parallel",
                    "parallel_multiple",
                )
            ),
        ),
        fig("irrelevance {} -> {}", pct(base, "irrelevance"), pct(s, "irrelevance")),
        fig("Val loss {} -> {}", first_val_loss(recorded("sft_small_gemma3_270m/metrics.jsonl")), t["final_val_loss"]),
        context("2-core CPU"),
        context("69 min training", why="18 min in the process the OOM killer stopped (no summary) + 51 min resumed"),
        fig("{} min BFCL", s["total_seconds"] / 60),
    ]


def claims_sweep_sft_small():
    rel = "sweep_sft_small/sweep_summary.json"
    hi = [sweep_job(rel, model__lora__rank=r, optim__lr="0.0003") for r in ("8", "16")]
    lo = [sweep_job(rel, model__lora__rank=r, optim__lr="0.0001") for r in ("8", "16")]
    jobs = recorded(rel)["jobs"]
    train = [recorded(f"sweep_sft_small/{j['job']}/train_summary.json") for j in jobs]
    bfcl_minutes = [recorded(f"sweep_sft_small/{j['job']}/bfcl_eval/summary.json")["total_seconds"] / 60 for j in jobs]
    return [
        fig("lr decides at {} steps", [t["steps"] for t in train]),
        fig(
            "3e-4 -> simple_python {}/{}% (rank 8/16), val loss {};",
            *(100 * j["bfcl"]["simple_python"] for j in hi),
            [j["final_val_loss"] for j in hi],
        ),
        fig(
            "1e-4 -> {}% (format not learned yet), val loss {};",
            [100 * j["bfcl"][c] for j in lo for c in ("simple_python", "multiple")],
            [j["final_val_loss"] for j in lo],
        ),
        context("rank 8 vs 16 no measurable difference"),
        fig("~{} min training", sum(t["train_seconds"] for t in train) / len(train) / 60),
        fig("{}-{} min BFCL per job", min(bfcl_minutes), max(bfcl_minutes)),
        context("2-core CPU"),
    ]


def ft_compare_run(run: str) -> tuple[dict, dict]:
    """(BFCL summary, train summary) of experiments/ft_compare/<run>."""
    return recorded(f"ft_compare/{run}/bfcl_eval/summary.json"), recorded(f"ft_compare/{run}/train_summary.json")


def claims_ft_compare_lora_rows():
    s, t = ft_compare_run("lora_rows")
    return [
        fig("val loss {};", t["final_val_loss"]),
        fig(
            "simple_python {}/{}, multiple {}/{}, irrelevance {}/{} (decode failures)",
            *right(s, "simple_python"),
            *right(s, "multiple"),
            *right(s, "irrelevance"),
        ),
        fig(
            "{}% of outputs stop at <end_of_turn>",
            100 * recorded("ft_compare/bfcl_compare.json")["runs"]["lora_rows"]["outputs"]["stopped"],
        ),
        fig("{} s training, {} GiB, 2-core AMD EPYC", t["train_seconds"], t["peak_rss_gib"]),
    ]


def claims_ft_compare_lora_only():
    s, t = ft_compare_run("lora_only")
    return [
        fig("val loss {};", t["final_val_loss"]),
        fig("{}/{} on the AST categories", *right(s, "simple_python", "multiple")),
        context("token 250607 instead of <end_of_turn>", why="read off the outputs; no summary records token ids"),
    ]


def claims_ft_compare_full():
    s, t = ft_compare_run("full_f32")
    rows = recorded("ft_compare/lora_rows/train_summary.json")
    (slow_s, _), (fast_s, fast_t) = ft_compare_run("full_f32_lr2e-5"), ft_compare_run("full_f32_lr1.5e-4")
    return [
        fig("val loss {};", t["final_val_loss"]),
        fig(
            "simple_python {}/{}, multiple {}/{}, irrelevance {}/{};",
            *right(s, "simple_python"),
            *right(s, "multiple"),
            *right(s, "irrelevance"),
        ),
        fig(
            "{}x slower a step, {} GiB",
            (t["train_seconds"] / t["steps"]) / (rows["train_seconds"] / rows["steps"]),
            t["peak_rss_gib"],
        ),
        fig("lr 2e-5: never ends its turn ({}/{})", *right(slow_s, "simple_python", "multiple")),
        fig("lr 1.5e-4: val {}, {}/{}", fast_t["final_val_loss"], *right(fast_s, "simple_python")),
    ]


def claims_sft_full_short():
    start = recorded("sft_full_short/start_sft_small_short/summary.json")
    end, t = recorded("sft_full_short/bfcl_eval/summary.json"), recorded("sft_full_short/train_summary.json")
    pm = recorded("sft_full_short/bfcl_eval/bfcl/parallel_multiple.jsonl")

    def change(cat):  # "<start correct> -> <end correct>/<total>"
        return right(start, cat)[0], *right(end, cat)

    return [
        context("vs its start on the same 30-entry slices"),
        fig("simple_python {} -> {}/{}, multiple {} -> {}/{},", *change("simple_python"), *change("multiple")),
        fig(
            "parallel_multiple {} -> {} ({}/{} outputs now make 2 calls)",
            right(start, "parallel_multiple")[0],
            right(end, "parallel_multiple")[0],
            sum(len(r["decoded"]) >= 2 for r in pm),
            len(pm),
        ),
        fig("irrelevance {} -> {}/{};", *change("irrelevance")),
        fig("val loss {} -> {}.", first_val_loss(recorded("sft_full_short/metrics.jsonl")), t["final_val_loss"]),
        fig("{} s training, {} GiB, 2-core AMD EPYC", t["train_seconds"], t["peak_rss_gib"]),
    ]


def claims_tiny_smoke():
    t = recorded("tiny_smoke/train_summary.json")
    return [
        fig(
            "val loss {} -> {} in {} steps",
            first_val_loss(recorded("tiny_smoke/metrics.jsonl")),
            t["final_val_loss"],
            t["steps"],
        ),
        context("40 s wall", why="the command's wall time, taken outside the process (total_seconds starts later)"),
        fig("({} s training, {} tok/s, {} GiB RSS)", t["train_seconds"], t["tokens_per_s"], t["peak_rss_gib"]),
        context("2-core Xeon CPU"),
    ]


def claims_grpo_from_sft_short():
    start = recorded("grpo_from_sft_short/start_bfcl/summary.json")
    g = recorded("grpo_from_sft_short/grpo_summary.json")
    probe = recorded("grpo_from_sft_short/probe.jsonl")
    return [
        fig(
            "irrelevance {}, simple_python {}, multiple {}, parallel {};",
            *(pct(start, c) for c in ("irrelevance", "simple_python", "multiple", "parallel")),
        ),
        fig("{} GRPO steps, {} s/step, {} GiB", g["steps"], g["seconds_per_step"], g["peak_rss_gib"]),
        context("2-core AMD EPYC"),
        fig(
            "probe mean reward {} -> {}, exact match {} -> {}",
            probe[0]["probe/reward_mean"],
            probe[-1]["probe/reward_mean"],
            probe[0]["probe/exact_match"],
            probe[-1]["probe/exact_match"],
        ),
    ]


def claims_grpo_from_sft_short_r3():
    start = recorded("grpo_from_sft_short/start_bfcl/summary.json")
    end = recorded("grpo_from_sft_short_r3/bfcl_eval/summary.json")
    g = recorded("grpo_from_sft_short_r3/grpo_summary.json")
    probe = recorded("grpo_from_sft_short_r3/probe.jsonl")
    clean = [
        irrelevance_split(experiments_dir() / d)["clean_abstentions"]
        for d in ("grpo_from_sft_short/start_bfcl/bfcl", "grpo_from_sft_short_r3/bfcl_eval/bfcl")
    ]
    return [
        fig(
            "{} GRPO steps, {} s/step (mean; rollout {}, update {}), {} GiB peak",
            g["steps"],
            g["step_seconds"]["mean"],
            g["rollout_seconds_mean"],
            g["update_seconds_mean"],
            g["peak_rss_gib_max"],
        ),
        context("2-core AMD EPYC"),
        fig(
            "Probe mean reward {} -> {}, exact match {} -> {}.",
            probe[0]["probe/reward_mean"],
            probe[-1]["probe/reward_mean"],
            probe[0]["probe/exact_match"],
            probe[-1]["probe/exact_match"],
        ),
        fig(
            "irrelevance {} -> {} (clean abstentions {} -> {} of {}),",
            pct(start, "irrelevance"),
            pct(end, "irrelevance"),
            *clean,
            start["categories"]["irrelevance"]["total_count"],
        ),
        fig(
            "simple_python {} -> {}, multiple {} -> {}, parallel {} -> {}:",
            *(v for c in ("simple_python", "multiple", "parallel") for v in (pct(start, c), pct(end, c))),
        ),
    ]


def claims_sft_broad_curve():
    # The curve is recorded point by point: the comment states every point scored so far.
    curve = recorded("sft_broad_curve/learning_curve.json")
    return [
        fig(  # the step written literally: one phrase per point, each found once
            f"step {p['step']} ({{}} rows): BFCL subset mean {{}}, false refusals {{}}%",
            p["rows_trained"],
            p["bfcl_subset_mean"],
            p["decisions"]["false_refusal_rate"],
        )
        for p in curve["points"]
    ]


RESULT_CLAIMS = {
    "sft_broad_curve": claims_sft_broad_curve,
    "grpo_from_sft_short": claims_grpo_from_sft_short,
    "grpo_from_sft_short_r3": claims_grpo_from_sft_short_r3,
    "bfcl_baseline_base": claims_bfcl_baseline_base,
    "sft_small_gemma3_270m": claims_sft_small_gemma3_270m,
    "sweep_sft_small": claims_sweep_sft_small,
    "ft_compare_lora_rows": claims_ft_compare_lora_rows,
    "ft_compare_lora_only": claims_ft_compare_lora_only,
    "ft_compare_full": claims_ft_compare_full,
    "sft_full_short": claims_sft_full_short,
    "tiny_smoke": claims_tiny_smoke,
}


def check_result_comment(text: str, claims: list[Claim]) -> list[str]:
    """Problems: a phrase not found exactly once, a figure off its recorded value, a digit no phrase covers."""
    problems, covered = [], text
    for claim in claims:
        matches = list(claim.regex.finditer(text))
        if len(matches) != 1:
            problems.append(f"{claim.template!r} occurs {len(matches)} times (want 1)")
            continue
        m = matches[0]
        for stated, values in zip(m.groups(), claim.values):
            tol = 0.5 * 10 ** -len(stated.partition(".")[2]) + 1e-9  # half a unit of the last digit written
            for value in values if isinstance(values, list) else [values]:
                if abs(float(stated) - float(value)) > tol:
                    problems.append(f"{claim.template!r}: states {stated}, recorded {value:.6g}")
        covered = covered[: m.start()] + " " * (m.end() - m.start()) + covered[m.end() :]
    loose = re.findall(r"\S*\d\S*", re.sub(r"experiments/\S*", "", covered))
    if loose:
        problems.append(f"figures no claim checks: {loose}")
    return problems


@pytest.mark.parametrize("name", experiment_names())
def test_result_comment_states_the_recorded_figures(name):
    text = result_comment(name)
    if name not in RESULT_CLAIMS:
        assert not recorded_summaries(name), f"{name} has recorded results: list its Result figures in RESULT_CLAIMS"
        return
    assert not check_result_comment(text, RESULT_CLAIMS[name]()), text


def test_a_wrong_or_unchecked_figure_fails():
    text, claims = result_comment("sft_small_gemma3_270m"), claims_sft_small_gemma3_270m()
    assert "simple_python 40.25," in text and "Val loss 2.03 -> 0.37" in text
    assert check_result_comment(text, claims) == []
    [problem] = check_result_comment(text.replace("simple_python 40.25,", "simple_python 40.35,"), claims)
    assert "states 40.35, recorded 40.25" in problem
    [problem] = check_result_comment(text.replace("0.37", "0.38"), claims)  # off by one in its last digit
    assert "states 0.38, recorded 0.3698" in problem
    assert check_result_comment(text + " Also 12% faster.", claims) == ["figures no claim checks: ['12%']"]


def test_public_override_paths():
    cfg = _compose(
        [
            "model.lora.rank=8",
            "model.lora.alpha=16",
            "optim.lr=3e-4",
            "train.max_steps=7",
            "eval.categories=[simple_python,irrelevance]",
            "eval.limit=5",
            "seed=3",
        ]
    )
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.optim.lr) == (8, 16.0, 3e-4)
    assert (cfg.train.max_steps, list(cfg.eval.categories), cfg.eval.limit, cfg.seed) == (
        7,
        ["simple_python", "irrelevance"],
        5,
        3,
    )


def test_appended_unknown_key_is_rejected():
    cfg = _compose(["+model.lora.rnk=3"])  # Hydra lets `+` through; our check does not
    with pytest.raises(ConfigValueError, match=r"model\.lora\.rnk"):
        check_config(cfg)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.lora.rnk=3", "rnk"),
        ("optim.learning_rate=1", "learning_rate"),
    ],
)
def test_unknown_key_names_the_key(override, key):
    with pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as e:
        _compose([override])
    assert key in str(e.value) + str(e.value.__cause__)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.lora.rank=abc", "model.lora.rank"),
        ("train.max_steps=1.5", "train.max_steps"),
        ("model.source=foo", "model.source"),
        ("tracking.mode=sometimes", "tracking.mode"),
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises((ConfigCompositionException, ValidationError)) as e:
        _compose([override])
    assert key in str(e.value) + str(e.value.__cause__)


def test_unknown_group_option_lists_choices():
    with pytest.raises(MissingConfigException) as e:
        _compose(["model=gemma_99b"])
    assert "gemma3_270m" in str(e.value) and "tiny" in str(e.value)


@pytest.mark.parametrize(
    "override,key",
    [
        ("train.max_steps=0", "train.max_steps"),
        ("model.lora.rank=0", "model.lora.rank"),
        ("optim.lr=-1", "optim.lr"),
        ("tpu.axis_sizes=[2]", "tpu.axis_sizes"),
        ("data.length_buckets=[64]", "data.length_buckets"),
        ("eval.limit=0", "eval.limit"),
        ("generation.constrain=json", "generation.constrain"),
    ],
)
def test_semantic_errors_name_the_key(override, key):
    cfg = _compose([override])
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        check_config(cfg)


def test_full_finetuning_in_bf16_warns(caplog):
    with caplog.at_level("WARNING", logger="gemma_tool_use.config"):
        check_config(_compose(["model.lora.enabled=false", "model.dtype=bfloat16"]))
    assert "model.dtype=float32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="gemma_tool_use.config"):
        check_config(_compose(["model.lora.enabled=false", "model.dtype=float32"]))
        check_config(_compose(["model.dtype=bfloat16"]))  # LoRA: adapters start at zero, no issue
    assert "bf16" not in caplog.text


def imported_modules(stderr: str) -> set[str]:
    """Module names from `PYTHONPROFILEIMPORTTIME=1` lines ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def run_cli_tracing_imports(*args, **kwargs):
    r = run_cli(*args, env_extra={"PYTHONPROFILEIMPORTTIME": "1"}, **kwargs)
    mods = imported_modules(r.stderr)
    assert "hydra" in mods, "import tracing worked"
    r.stderr = "\n".join(line for line in r.stderr.splitlines() if not line.startswith("import time:"))
    return r, sorted(m for m in mods if m.split(".")[0] in ("jax", "jaxlib", "flax", "tunix"))


def test_cli_errors_are_short_and_fast(tmp_path):
    """Short: one line naming the key, no traceback. Fast: no JAX/flax/tunix import before the
    config is known to be valid (checked by tracing imports, not by a wall clock)."""
    r, heavy = run_cli_tracing_imports("model.lora.rnk=3", cwd=tmp_path)
    assert r.returncode != 0 and not heavy, heavy[:5]
    assert "Key 'rnk' not in 'LoraConfig'" in r.stderr and "full_key: model.lora.rnk" in r.stderr
    assert "Traceback" not in r.stderr
    r, heavy = run_cli_tracing_imports("train.max_steps=0", cwd=tmp_path)
    assert r.returncode == 2 and "train.max_steps: must be > 0" in r.stderr + r.stdout
    assert not heavy, heavy[:5]
    r, heavy = run_cli_tracing_imports("stage=grpo", cwd=tmp_path)  # GRPO needs an explicit SFT start
    assert r.returncode == 2 and "error: train.init_from: stage=grpo starts from an SFT run" in r.stderr
    assert not heavy, heavy[:5]
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["grpo", "sft_small"]  # named by stage


def test_help_and_cfg_job_answer_in_seconds():
    """--help and --cfg job never import JAX (what made them slow), checked by tracing imports."""
    r, heavy = run_cli_tracing_imports("--help")
    assert (
        r.returncode == 0
        and "model: gemma3_270m, gemma3_270m_random, tiny" in r.stdout
        and "gemma_tool_use is powered by Hydra" in r.stdout
    )
    assert not heavy, heavy[:5]
    r, heavy = run_cli_tracing_imports("--cfg", "job", "experiments=tiny_smoke")
    assert r.returncode == 0 and "max_steps: 12" in r.stdout
    assert not heavy, f"no JAX import before the config is known: {heavy[:5]}"
