"""Mix building: decontamination, category filter, tool-disjoint validation split,
augmentation, determinism, data card, tokenization cache."""

import json

import pytest
from omegaconf import OmegaConf

from gemma_tool_use.config.schema import DataConfig
from gemma_tool_use.data import mix as mix_mod
from gemma_tool_use.data.conversations import LoadReport
from gemma_tool_use.data.rows import make_row
from gemma_tool_use.evaluation import bfcl


def synthetic_rows():
    report = LoadReport()
    rows = []
    for i in range(60):
        tools = [
            {
                "name": f"tool_{i}",
                "description": f"Does thing number {i} for the user.",
                "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
            },
            {
                "name": f"other_{i}",
                "description": f"Unrelated helper {i}.",
                "parameters": {"type": "object", "properties": {}},
            },
        ]
        if i % 3 == 0:
            msgs = [{"role": "user", "content": f"Tell me a joke number {i}"}, {"role": "assistant", "content": "Ha."}]
        else:
            msgs = [
                {"role": "user", "content": f"Please do thing {i} with x={i}"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": f"tool_{i}", "args": {"x": i}}]},
            ]
        rows.append(make_row(tools, msgs, source="synthetic", row_id=i, report=report))
    # a planted BFCL row
    e = bfcl.load_entries("simple_python")[7]
    conv = bfcl.entry_conversation(e)
    rows.append(
        make_row(
            conv["tools"],
            conv["messages"] + [{"role": "assistant", "content": "x"}],
            source="synthetic",
            row_id="bfcl",
            report=report,
        )
    )
    return rows


@pytest.fixture
def patched(monkeypatch, tmp_path):
    monkeypatch.setattr(
        mix_mod,
        "load_sources",
        lambda names, root, strict, hub_files=None: (synthetic_rows(), {"synthetic": {"bad": 2}}),
    )
    monkeypatch.setenv("GEMMA_TOOL_USE_CACHE", str(tmp_path / "cache"))
    return tmp_path


def data_cfg(**over):
    base = {
        "name": "test_mix",
        "root": "/",
        "sources": ["synthetic"],
        "val_tool_fraction": 0.2,
        "augment": {"irrelevance": 0.2, "distractors": 0.2},
    }
    base.update(over)
    return OmegaConf.merge(OmegaConf.structured(DataConfig), base)


def tool_names(rows):
    return {t["name"] for r in rows for t in r["tools"]}


def test_mix_steps_split_and_determinism(patched):
    train, val, card = mix_mod.build_mix(data_cfg(), seed=0)
    assert card.dropped["decontaminated"] == {"bfcl_query_exact": 1}
    assert card.dropped["loaded"] == {"synthetic:bad": 2}
    assert val and not (tool_names(val) & tool_names([r for r in train if "augmentation" not in r["meta"]]))
    assert card.augmentations["distractors"] > 0 and card.augmentations["irrelevance"] > 0
    assert set(card.steps) >= {"loaded", "decontaminated", "val", "train"}
    again, _, _ = mix_mod.build_mix(data_cfg(), seed=0)
    other, _, _ = mix_mod.build_mix(data_cfg(), seed=1)
    assert json.dumps(train) == json.dumps(again) and json.dumps(train) != json.dumps(other)


def test_category_filter_and_cap(patched):
    train, _, card = mix_mod.build_mix(
        data_cfg(categories=["multiple"], augment={}, val_tool_fraction=0.0, max_rows_per_category=10), seed=0
    )
    assert len(train) == 10 and {r["meta"]["category"] for r in train} == {"multiple"}
    assert card.dropped["categories"] == {"irrelevance": 20}


def test_prepare_caches_tokenized_mix_and_writes_card(patched, tokenizer, monkeypatch):
    from gemma_tool_use.data.prepare import prepare_training_data

    cfg = OmegaConf.create({"data": OmegaConf.to_container(data_cfg()), "seed": 0})
    cfg.data = data_cfg()
    train, val, card = prepare_training_data(cfg, tokenizer, patched / "run1")
    assert (patched / "run1" / "data_card.md").read_text().startswith("# Data card: test_mix")
    assert card["token_lengths"]["train"] and 0 < card["no_call_share"]["train"] < 1

    def boom(*a, **k):
        raise AssertionError("second run must not rebuild the mix")

    monkeypatch.setattr(mix_mod, "build_mix", boom)
    train2, val2, _ = prepare_training_data(cfg, tokenizer, patched / "run2")
    assert [e.ids.tolist() for e in train2.examples] == [e.ids.tolist() for e in train.examples]
    assert [e.loss_mask.tolist() for e in val2.examples] == [e.loss_mask.tolist() for e in val.examples]


@pytest.mark.parametrize("damage", ["truncated train.npz", "garbage data_card.json", "old COMPLETE marker"])
def test_a_corrupt_mix_cache_is_rebuilt_with_a_warning(patched, tokenizer, caplog, damage):
    import logging

    from gemma_tool_use.data.prepare import prepare_training_data

    cfg = OmegaConf.create({"data": OmegaConf.to_container(data_cfg()), "seed": 0})
    cfg.data = data_cfg()
    train, _, _ = prepare_training_data(cfg, tokenizer, patched / "run1")
    cache = next((patched / "cache" / "mixes").glob("test_mix-*"))
    if damage == "truncated train.npz":
        (cache / "train.npz").write_bytes((cache / "train.npz").read_bytes()[:100])
    elif damage == "garbage data_card.json":
        (cache / "data_card.json").write_text("{garbage")
    else:
        (cache / "COMPLETE").write_text("abc123")  # the plain marker of an older version
    with caplog.at_level(logging.WARNING):
        train2, _, card = prepare_training_data(cfg, tokenizer, patched / "run2")
    assert f"data mix cache {cache} is corrupt" in caplog.text and "rebuilding" in caplog.text
    assert [e.ids.tolist() for e in train2.examples] == [e.ids.tolist() for e in train.examples]
    caplog.clear()
    prepare_training_data(cfg, tokenizer, patched / "run3")  # the rebuilt cache is whole again
    assert "corrupt" not in caplog.text


def test_card_counts_the_rows_that_fit_max_length(patched, tokenizer):
    """A short data.max_length changes the mix; the card shows what is actually trained."""
    from gemma_tool_use.data.prepare import prepare_training_data

    full, _, _ = prepare_training_data(OmegaConf.create({"data": data_cfg(), "seed": 0}), tokenizer, patched / "a")
    cut = int(sorted(len(e) for e in full.examples)[len(full.examples) // 2])
    train, _, card = prepare_training_data(
        OmegaConf.create({"data": data_cfg(max_length=cut), "seed": 0}), tokenizer, patched / "b"
    )
    trained = card["steps"]["train_tokenized"]
    assert trained["rows"] == len(train.examples) < card["steps"]["train"]["rows"] == len(full.examples)
    assert sum(trained["by_category"].values()) == trained["rows"] and max(len(e) for e in train.examples) <= cut
    assert 0 <= card["no_call_share"]["train_tokenized"] <= 1
    assert "## train_tokenized: " in (patched / "b" / "data_card.md").read_text()


def test_missing_files_are_fetched_from_pinned_upstream_and_verified(tmp_path, monkeypatch):
    import shutil

    from gemma_tool_use.data.sources import LOCAL_SOURCES, fetch
    from gemma_tool_use.utils.files import sha256_file

    from conftest import REPO

    fixtures = REPO / "tests" / "fixtures" / "local"  # a few real rows: pin what they hold
    local = LOCAL_SOURCES["llamafactory/reason_tool_use"].files[0]
    monkeypatch.setitem(fetch.PINNED, local, sha256_file(fixtures / local))
    mirror = tmp_path / "mirror"
    monkeypatch.setenv("GEMMA_TOOL_USE_DATA_MIRROR", mirror.as_uri())
    upstream = mirror / fetch.raw_url(local).removeprefix(mirror.as_uri() + "/")
    upstream.parent.mkdir(parents=True)
    shutil.copy(fixtures / local, upstream)
    root = tmp_path / "root"
    rows, dropped = mix_mod.load_sources(["llamafactory/reason_tool_use"], root, strict=False)
    assert rows and fetch.verify(root, [local]) == []
    # A corrupted upstream copy is refused.
    (root / local).unlink()
    upstream.write_text("tampered")
    with pytest.raises(mix_mod.DataError, match="does not match the pinned"):
        mix_mod.load_sources(["llamafactory/reason_tool_use"], root, strict=False)


def test_tool_pools_are_verified_too(tmp_path, monkeypatch):
    import shutil

    from gemma_tool_use.data.sources import fetch
    from gemma_tool_use.utils.files import sha256_file

    from conftest import REPO

    fixtures = REPO / "tests" / "fixtures" / "local"
    names = ["seal_tools/tool.jsonl", "toolalpaca/public_apis.json"]
    for name in names:
        monkeypatch.setitem(fetch.PINNED, name, sha256_file(fixtures / name))
        (tmp_path / name).parent.mkdir(parents=True)
        shutil.copy(fixtures / name, tmp_path / name)
    pool = mix_mod.tool_pool(names, tmp_path, strict=False)
    assert len(pool) == 18 + 5 and all(t["parameters"]["type"] == "object" for t in pool)
    (tmp_path / names[1]).write_text('{"count": 0, "entries": []}')
    with pytest.raises(mix_mod.DataError, match="public_apis.json: sha256"):
        mix_mod.tool_pool(names, tmp_path, strict=False)


def test_hub_sources_join_a_mix_from_local_upstream_files(tmp_path, monkeypatch):
    from conftest import REPO

    fixtures = REPO / "tests" / "fixtures" / "hub"
    xlam = next(fixtures.glob("xlam*60k*"), None) or next(fixtures.glob("xlam*"), None)
    if xlam is None:
        pytest.skip("no xLAM fixture")
    monkeypatch.setenv("GEMMA_TOOL_USE_CACHE", str(tmp_path / "cache"))
    cfg = data_cfg(
        sources=["hub:Salesforce/xlam-function-calling-60k"],
        root=str(tmp_path),
        hub_files={"Salesforce/xlam-function-calling-60k": str(xlam)},
        augment={},
        val_tool_fraction=0.0,
    )
    train, _, card = mix_mod.build_mix(cfg, seed=0)
    assert train and card.steps["loaded"]["by_source"] == {
        "Salesforce/xlam-function-calling-60k": card.steps["loaded"]["rows"]
    }


def test_source_caps_sample_train_and_val_after_the_split_and_the_card_names_licences(patched):
    uncapped, val0, _ = mix_mod.build_mix(data_cfg(augment={}), seed=0)
    train, val, card = mix_mod.build_mix(data_cfg(augment={}, max_rows_per_source={"synthetic": 20}), seed=0)
    assert len(train) == 20 and len(uncapped) > 20
    assert {r["meta"]["row"] for r in train} <= {r["meta"]["row"] for r in uncapped}
    assert card.dropped["source_caps"] == {"synthetic": len(uncapped) - 20}
    assert len(val) == min(len(val0), 2)  # val keeps a tenth of the cap
    assert card.licenses == {"synthetic": "unknown"} and "licences: synthetic: unknown" in card.to_markdown()
    again, _, _ = mix_mod.build_mix(data_cfg(augment={}, max_rows_per_source={"synthetic": 20}), seed=0)
    assert json.dumps(again) == json.dumps(train)


def test_licences_of_real_sources():
    assert mix_mod.source_license("sgd/train").startswith("CC-BY-SA-4.0")
    assert mix_mod.source_license("snips/train").startswith("CC0")
    assert mix_mod.source_license("clinc150/train_val").startswith("CC-BY-3.0")
    assert mix_mod.source_license("hub:Team-ACE/ToolACE") == "Apache-2.0"
