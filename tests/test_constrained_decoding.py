"""generation.constrain=tools: the tool-call grammar (what it accepts and refuses), the token
vocabulary llguidance sees, and the generator decoding under it (static and refill paths, greedy
and sampled) on a tiny random model."""

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from gemma_tool_use.config.schema import register_configs
from gemma_tool_use.format.parse import parse_model_output
from gemma_tool_use.format.render import render_assistant_text, render_conversation
from gemma_tool_use.generation import grammar_matcher
from gemma_tool_use.generation.generator import Generator, SamplingParams
from gemma_tool_use.generation.tool_grammar import (
    ToolChoice,
    ToolChoiceError,
    grammars_for,
    strict_schema,
    tool_grammar,
)
from gemma_tool_use.model.tokenizer import END_OF_TURN_ID, EOS_ID
from gemma_tool_use.utils.paths import conf_dir

register_configs()

WEATHER = {
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "where": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}},
            "hours": {"type": "array", "items": {"type": "integer"}},
            "alerts": {"type": "boolean"},
        },
        "required": ["city"],
    },
}
# every argument forced but two binary choices: a random model must finish a valid call
SWITCH = {
    "name": "set_mode",
    "description": "Switch the device",
    "parameters": {
        "type": "object",
        "properties": {"mode": {"type": "string", "enum": ["on", "off"]}, "loud": {"type": "boolean"}},
        "required": ["mode", "loud"],
    },
}
TOOLS = [WEATHER, SWITCH]


def call(name, args):
    return render_assistant_text({"tool_calls": [{"name": name, "args": args}]})


@pytest.fixture(scope="module")
def grammars(tokenizer):
    return grammar_matcher.GrammarCache(grammar_matcher.grammar_tokenizer(tokenizer, (EOS_ID, END_OF_TURN_ID)))


def accepts(grammars, tokenizer, grammar, text) -> bool:
    return grammars.first_refused(grammar, tokenizer.encode(text) + [END_OF_TURN_ID]) is None


AUTO_CASES = [
    # (case, model turn text, accepted under tool_choice auto)
    ("plain text", "I cannot check the weather, sorry.", True),
    ("empty answer", "", True),
    ("one call", call("get_weather", {"city": "Paris"}), True),
    ("all arguments, schema order", call("get_weather", {"city": "Oslo", "days": 3, "unit": "celsius"}), True),
    (
        "two calls",
        call("get_weather", {"city": "Paris"}) + "\n" + call("set_mode", {"mode": "on", "loud": False}),
        True,
    ),
    ("text then a call", "Let me look.\n" + call("get_weather", {"city": "Paris"}), True),
    ("trailing newline after the last call", call("get_weather", {"city": "Paris"}) + "\n", True),
    ("nested object", call("get_weather", {"city": "Rome", "where": {"lat": 41.9, "lon": 12.5}}), True),
    ("array of integers", call("get_weather", {"city": "Rome", "hours": [9, 12, 18]}), True),
    ("unicode", call("get_weather", {"city": "Zürich 東京 😀"}), True),
    ("control character escaped", call("get_weather", {"city": "a\tb\u001bc"}), True),
    ("'</' written as is", '<tool_call>\n{"name": "get_weather", "args": {"city": "a</b"}}\n</tool_call>', True),
    ("unknown name", call("get_forecast", {"city": "Paris"}), False),
    ("unknown key", call("get_weather", {"city": "Paris", "country": "FR"}), False),
    ("unknown nested key", call("get_weather", {"city": "Rome", "where": {"lat": 1, "alt": 2}}), False),
    ("missing required key", call("get_weather", {"days": 2}), False),
    ("float for an integer", call("get_weather", {"city": "Paris", "days": 2.0}), False),
    ("string for an integer", call("get_weather", {"city": "Paris", "days": "2"}), False),
    ("sentence for a boolean", call("get_weather", {"city": "Paris", "alerts": "yes please"}), False),
    ("value outside the enum", call("get_weather", {"city": "Paris", "unit": "kelvin"}), False),
    ("integer past JSON's safe range", call("get_weather", {"city": "Paris", "days": 2**53}), False),
    ("largest safe integer", call("get_weather", {"city": "Paris", "days": 2**53 - 1}), True),
    ("wrong item type", call("get_weather", {"city": "Rome", "hours": ["9am"]}), False),
    ("keys out of schema order", call("get_weather", {"days": 3, "city": "Oslo"}), False),
    ("args not an object", '<tool_call>\n{"name": "get_weather", "args": "Paris"}\n</tool_call>', False),
    ("other separators", '<tool_call>\n{"name":"get_weather","args":{"city":"Paris"}}\n</tool_call>', False),
    ("a list that never closes", '<tool_call>\n{"name": "get_weather", "args": {"city": "R", "hours": [1, 2', False),
    ("a tag inside text", "Calling <tool_call> now", False),
    ("a closing tag in text", "Done </tool_call>", False),
    ("text after a call", call("get_weather", {"city": "Paris"}) + "\nDone.", False),
    # dump_json writes '</' as '<\/' (so the block cannot close early); llguidance's JSON has no
    # '\/' escape (tool_grammar.py); format/parse.py reads the raw '</' form safely
    ("'</' written '<\\/'", call("get_weather", {"city": "a</b"}), False),
]


@pytest.mark.parametrize("case, text, accepted", AUTO_CASES, ids=[c[0] for c in AUTO_CASES])
def test_tool_grammar_auto(grammars, tokenizer, case, text, accepted):
    assert accepts(grammars, tokenizer, tool_grammar(TOOLS), text) is accepted


def test_accepted_calls_parse_back_to_the_calls(grammars, tokenizer):
    """What the grammar accepts, the parser reads as the calls meant, '</' in a string included."""
    text = '<tool_call>\n{"name": "get_weather", "args": {"city": "x</tool_call>y"}}\n</tool_call>'
    assert accepts(grammars, tokenizer, tool_grammar(TOOLS), text)
    parsed = parse_model_output(text, TOOLS)
    assert parsed.ok and parsed.calls == [{"name": "get_weather", "args": {"city": "x</tool_call>y"}}]


def test_tool_choice_modes(grammars, tokenizer):
    one = call("get_weather", {"city": "Paris"})
    two = one + "\n" + call("set_mode", {"mode": "on", "loud": True})
    required = tool_grammar(TOOLS, ToolChoice("required"))
    assert accepts(grammars, tokenizer, required, one) and accepts(grammars, tokenizer, required, two)
    assert not accepts(grammars, tokenizer, required, "No tool fits.")
    assert not accepts(grammars, tokenizer, required, "Sure.\n" + one)
    named = tool_grammar(TOOLS, ToolChoice("function", "set_mode"))
    assert accepts(grammars, tokenizer, named, call("set_mode", {"mode": "off", "loud": False}))
    assert not accepts(grammars, tokenizer, named, one)  # another function
    assert not accepts(grammars, tokenizer, named, two)  # exactly one call
    none = tool_grammar(TOOLS, ToolChoice("none"))
    assert accepts(grammars, tokenizer, none, "It is sunny.") and not accepts(grammars, tokenizer, none, one)
    assert tool_grammar([], ToolChoice("auto")) is None
    with pytest.raises(ToolChoiceError, match="not among the offered tools"):
        tool_grammar(TOOLS, ToolChoice("function", "nope"))
    with pytest.raises(ToolChoiceError, match="at least one offered tool"):
        tool_grammar([], ToolChoice("required"))


def test_loose_tools_take_any_arguments(grammars, tokenizer):
    """Under constrain=none a strict function's arguments follow its schema, the others' are free."""
    grammar = tool_grammar(TOOLS, ToolChoice("required"), loose=frozenset({"get_weather"}))
    assert accepts(grammars, tokenizer, grammar, call("get_weather", {"town": "Paris", "days": "2"}))
    assert not accepts(grammars, tokenizer, grammar, call("set_mode", {"mode": "dim", "loud": True}))


def test_strict_schema_closes_listed_objects_at_every_depth():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"b": {"type": "string"}}},
            "c": {"type": "array", "items": {"type": "object", "properties": {"d": {"type": "integer"}}}},
            "free": {"type": "object"},  # no properties listed: any keys
            "open": {"type": "object", "properties": {}, "additionalProperties": True},  # the schema's word wins
            "properties": {"type": "string"},  # a property named like the keyword
        },
    }
    out = strict_schema(schema)
    assert out["additionalProperties"] is False
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["c"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in out["properties"]["free"]
    assert out["properties"]["open"]["additionalProperties"] is True
    assert out["properties"]["properties"] == {"type": "string"}
    assert "additionalProperties" not in schema  # the input is not changed
    bounded = strict_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})
    assert bounded["properties"]["n"] == {"type": "integer", "minimum": 0, "maximum": 2**53 - 1}


def test_grammars_for_follows_the_setting():
    assert grammars_for([TOOLS, []], "none") is None
    assert grammars_for([TOOLS, []], "tools") == [tool_grammar(TOOLS), None]
    with pytest.raises(ToolChoiceError, match="generation.constrain"):
        grammars_for([TOOLS], "json")


def test_vocabulary_bytes_match_the_tokenizer(tokenizer):
    """llguidance decodes ids to the same text as the tokenizer; tag-like user-defined tokens
    (`<b>`) are text, control tokens special."""
    lltok = grammar_matcher.grammar_tokenizer(tokenizer, (EOS_ID, END_OF_TURN_ID))
    text = 'Hi <b>bold</b> é 😀\n\n  {"a": [1, 2.5e3]} <tool_call>'
    ids = tokenizer.encode(text)
    assert lltok.decode_bytes(ids).decode("utf-8") == tokenizer.decode(ids) == text
    assert lltok.is_special_token(END_OF_TURN_ID) and not lltok.is_special_token(tokenizer.encode("<b>")[0])
    assert lltok.vocab_size == tokenizer.vocab_size


def test_a_grammar_that_does_not_compile_leaves_its_rows_unconstrained(grammars, tokenizer):
    broken = tool_grammar([{"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/nope"}}}}])
    rows = grammar_matcher.RowMatchers(grammars, 2, tokenizer.vocab_size)
    before = grammars.warnings[grammar_matcher.GRAMMAR_FAILED]
    rows.assign(0, broken)
    rows.assign(1, tool_grammar(TOOLS))
    assert rows.matchers[0] is None and rows.matchers[1] is not None
    assert grammars.warnings[grammar_matcher.GRAMMAR_FAILED] == before + 1
    masks = rows.masks([0, 1], [0, 0], [False, False], [True, True])
    assert (masks[0] == -1).all()  # unconstrained: every token allowed
    allowed = {t for t in range(tokenizer.vocab_size) if masks[1][t // 32] >> (t % 32) & 1}
    assert tokenizer.encode("<")[0] in allowed and END_OF_TURN_ID in allowed  # a call may start, or stop now


# ------------------------------------------------------------------ the generator under a grammar


@pytest.fixture(scope="module")
def tiny_model():
    from gemma_tool_use.model.loading import build_model
    from gemma_tool_use.utils.mesh import build_mesh

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", "model.lora.enabled=false"])
    return build_model(cfg.model, build_mesh(cfg.tpu), 0)


def _prompt(tokenizer, question, tools=TOOLS):
    conv = {"tools": tools, "messages": [{"role": "user", "content": question}]}
    return render_conversation(conv, tokenizer, add_generation_prompt=True).ids.tolist()


@pytest.mark.parametrize(
    "refill, temperature",
    [(False, 0.0), (False, 1.0), (True, 1.0)],
    ids=["static-greedy", "static-sampled", "refill-sampled"],
)
def test_constrained_output_is_a_valid_call_where_unconstrained_is_not(tiny_model, tokenizer, refill, temperature):
    generator = Generator(tiny_model, tokenizer, batch_size=2, refill=refill)
    named = tool_grammar(TOOLS, ToolChoice("function", "set_mode"))
    # 3 prompts over 2 slots: the refill path fills a freed slot with a fresh matcher
    prompts = [_prompt(tokenizer, q) for q in ("Switch it on", "Off, quietly", "Toggle")]
    params = SamplingParams(max_new_tokens=48, temperature=temperature, seed=3)
    free = generator.generate_ids(prompts, params)
    assert not any(parse_model_output(r.text, TOOLS).calls for r in free)  # random text
    held = generator.generate_ids(prompts, params, grammars=[named] * len(prompts))
    for r in held:
        parsed = parse_model_output(r.text, TOOLS)
        assert r.stop_reason == "stop" and parsed.ok, r.text
        assert [c["name"] for c in parsed.calls] == ["set_mode"]
        assert parsed.calls[0]["args"]["mode"] in ("on", "off") and isinstance(parsed.calls[0]["args"]["loud"], bool)
    assert generator.grammar_warnings == {}


@pytest.mark.parametrize("refill", [False, True], ids=["static", "refill"])
def test_greedy_output_unchanged_where_it_already_conforms(tiny_model, tokenizer, refill):
    """The tiny model's greedy text holds no tool-call tag: under the auto grammar every token it
    picks stays allowed, so the constrained run returns the very same tokens; rows without a
    grammar in the same batch are untouched too."""
    generator = Generator(tiny_model, tokenizer, batch_size=4, refill=refill)
    prompts = [_prompt(tokenizer, q) for q in ("Weather in Paris?", "Hello", "What can you do?")]
    params = SamplingParams(max_new_tokens=24)
    free = generator.generate_ids(prompts, params)
    assert all("<tool_call>" not in r.text and "</tool_call>" not in r.text for r in free)
    held = generator.generate_ids(prompts, params, grammars=[tool_grammar(TOOLS), None, tool_grammar(TOOLS)])
    assert [r.token_ids for r in held] == [r.token_ids for r in free]


def test_required_call_in_a_batch_with_unconstrained_rows(tiny_model, tokenizer):
    """Rows of one batch follow their own grammars (or none), and the first token after the
    prompt is masked too: a 'required' row starts with the call tag at once."""
    generator = Generator(tiny_model, tokenizer, batch_size=4)
    only_switch = [SWITCH]
    prompts = [_prompt(tokenizer, "Switch", only_switch), _prompt(tokenizer, "Hello", only_switch)]
    out = generator.generate_ids(
        prompts, SamplingParams(max_new_tokens=40), grammars=[tool_grammar(only_switch, ToolChoice("required")), None]
    )
    assert out[0].text.startswith("<tool_call>\n") and parse_model_output(out[0].text, only_switch).ok
    assert json.loads(out[0].text.split("\n")[1])["name"] == "set_mode"
    assert not parse_model_output(out[1].text, only_switch).calls
