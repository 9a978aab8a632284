"""The tokenizer rebuilt from GGUF metadata matches the official tokenizer.json id for id."""

import json
from pathlib import Path

import pytest

from gemma_tool_use.model.tokenizer import (
    END_OF_TURN_ID,
    START_OF_TURN_ID,
    GemmaTokenizer,
    TokenizerError,
    load_tokenizer,
    tokenizer_from_gguf,
)

CORPUS = [
    "Hello, world!",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\n\nruns",
    "def f(x):\n    return {'a': [1, 2.5, -3e10]}\n",
    '{"name": "get_weather", "args": {"city": "Paris"}}',
    "数字 12345 和中文、日本語のテキスト、한국어",
    "emoji 🤖🔧✅ and ZWJ 👩‍💻",
    "Ünïcödé façade naïve",
    "x" * 300,
    "    " * 20 + "indent",
    "<tool_call>\n{}\n</tool_call>",
    "a\u00a0b\u2003c",
    "",
    'public static void main(String[] args) { System.out.println("hi"); }',
    "https://example.com/path?q=1&r=2#frag",
    "1234567890 3.14159 -0.0001",
    "\\n literal backslash-n",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
]


@pytest.mark.parametrize("text", CORPUS)
def test_ids_identical_to_official(tokenizer, reference_tokenizer, text):
    ours = tokenizer.encode(text, parse_special=True)
    assert ours == reference_tokenizer.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ours) == text


PARITY_FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer_parity.json"


def parity_cases():
    return json.loads(PARITY_FIXTURE.read_text(encoding="utf-8"))["cases"]


def test_ids_identical_to_recorded_official_ids(tokenizer):
    """Runs on a clean clone: ids the official tokenizer.json gave for a few hundred diverse strings
    (scripts/make_tokenizer_parity_fixture.py wrote them)."""
    cases = parity_cases()
    assert len(cases) >= 300
    wrong = [
        (c["text"], ours, c["ids"])
        for c in cases
        if (ours := tokenizer.encode(c["text"], parse_special=True)) != c["ids"]
    ]
    assert not wrong, f"{len(wrong)}/{len(cases)} differ, e.g. (text, ours, official): {wrong[:3]}"
    not_round_trip = [c["text"] for c in cases if tokenizer.decode(c["ids"]) != c["text"]]
    assert not not_round_trip, not_round_trip[:5]


def test_parity_fixture_is_what_the_official_tokenizer_gives(reference_tokenizer):
    """The committed ids are still the official ones (skips without ../shared)."""
    stale = [
        c["text"]
        for c in parity_cases()
        if reference_tokenizer.encode(c["text"], add_special_tokens=False).ids != c["ids"]
    ]
    assert not stale, f"re-run scripts/make_tokenizer_parity_fixture.py: {stale[:5]}"


def test_special_tokens(tokenizer):
    assert tokenizer.encode("<start_of_turn>", parse_special=True) == [START_OF_TURN_ID]
    assert tokenizer.encode("<end_of_turn>", parse_special=True) == [END_OF_TURN_ID]
    assert START_OF_TURN_ID not in tokenizer.encode("<start_of_turn>")  # plain text stays text
    assert tokenizer.vocab_size == 262144


def test_cache_is_reused_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    from gemma_tool_use.model.tokenizer import default_gguf_path

    monkeypatch.setenv("GEMMA_TOOL_USE_CACHE", str(tmp_path))
    tok = tokenizer_from_gguf(default_gguf_path())
    cached = next(tmp_path.rglob("tokenizer.model"))
    cached.write_bytes(b"garbage")
    tok2 = tokenizer_from_gguf(default_gguf_path())
    assert tok2.encode("hello world") == tok.encode("hello world")
    assert cached.stat().st_size > 1000


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.model"))
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        GemmaTokenizer.from_file(bad)
