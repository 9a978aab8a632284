"""Export a model (LoRA and trained rows merged) as GGUF for llama.cpp / Ollama (`stage=export`).

* Tensors: the merged weights (export.merged_hf_tensors) under llama.cpp's Gemma 3 names (the
  inverse of weights.gguf_name_to_hf), RMSNorm weights stored as 1 + w (llama.cpp's convention,
  undone by weights.gguf_to_hf_tensors on reading), norms in F32, matrices in the chosen type:
  `f32`, `f16`, `bf16` or `q8_0` (the `gguf` package writes these; it cannot write K-quants such
  as Q4_K_M: quantize the f16 file with llama.cpp's `llama-quantize model-f16.gguf out.gguf Q4_K_M`).
* Metadata: the `gemma3.*` hyperparameters from the model's architecture, and the tokenizer
  (`tokenizer.ggml.*`: the same Gemma 3 vocabulary) copied from the offline base GGUF.
* `tokenizer.chat_template`: a Jinja template that renders this project's tool format (system
  text, tool instructions and `<tools>` list in the first user turn, `<tool_call>` blocks in model
  turns, `<tool_response>` turns), so `llama-server --jinja` prompts the model as it was trained.
  tests/test_export_gguf.py renders it with jinja2 against chat_format.render_text.
* An Ollama `Modelfile` beside it (Go template of the same format; stop on <end_of_turn>).
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import numpy as np

from gemma_tool_use.format.render import DEFAULT_TOOL_SYSTEM_PROMPT
from gemma_tool_use.model.gguf_reader import open_gguf
from gemma_tool_use.model.weights import _GGUF_LAYER_MAP, gguf_to_hf_tensors
from gemma_tool_use.utils.errors import UserError

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")

# the inverse of the loader's map: one table of names serves reading and writing
_HF_TO_GGUF_LAYER = {hf: gguf_name for gguf_name, hf in _GGUF_LAYER_MAP.items()}

_TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_sep_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
)


class ExportError(UserError, ValueError):
    pass


def hf_name_to_gguf(name: str) -> str:
    base = name.removesuffix(".weight")
    if base == "model.embed_tokens":
        return "token_embd.weight"
    if base == "model.norm":
        return "output_norm.weight"
    parts = base.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _HF_TO_GGUF_LAYER:
        return f"blk.{int(parts[2])}.{_HF_TO_GGUF_LAYER[parts[3]]}.weight"
    raise ExportError(f"no GGUF name for tensor {name!r}")


def _json_tool_text(expr: str) -> str:
    """Jinja: JSON of an expression as chat_format.dump_json writes it ('</' escaped)."""
    return f'({expr} | tojson | replace("</", "<\\\\/"))'


# The project's format as a Jinja chat template (see chat_format._turns): the first user turn
# starts with the system message, the tool instructions and the tool list; consecutive tool
# results (and a user message after them) share one user turn; a tool result that is JSON text
# is embedded as JSON, any other as a JSON string.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(prefix='', used=false, in_user=false, names=[], k=0) -%}"
    "{%- set msgs = messages -%}"
    "{%- if msgs and msgs[0]['role'] in ['system', 'developer'] -%}"
    "{%- set ns.prefix = msgs[0]['content'] | trim -%}{%- set msgs = msgs[1:] -%}{%- endif -%}"
    "{%- if tools -%}"
    "{%- set ns.prefix = ns.prefix + ('\\n\\n' if ns.prefix else '') + SYSTEM_PROMPT + '\\n\\n<tools>\\n[' -%}"
    "{%- for t in tools -%}"
    "{%- set f = t['function'] if t['function'] is defined else t -%}"
    "{%- set p = f['parameters'] if f['parameters'] is defined and f['parameters'] else "
    "{'type': 'object', 'properties': {}} -%}"
    "{%- set d = f['description'] if f['description'] is defined and f['description'] is not none else '' -%}"
    "{%- set ns.prefix = ns.prefix + "
    + _json_tool_text("{'name': f['name'], 'description': d, 'parameters': p}")
    + " + (',\\n' if not loop.last else '') -%}"
    "{%- endfor -%}"
    "{%- set ns.prefix = ns.prefix + ']\\n</tools>' -%}"
    "{%- endif -%}"
    "{%- for m in msgs -%}"
    "{%- if m['role'] == 'assistant' -%}"
    "{%- if ns.in_user -%}{{- '<end_of_turn>\\n' -}}{%- set ns.in_user = false -%}{%- endif -%}"
    "{%- set text = (m['content'] | trim) if m['content'] is string else '' -%}"
    "{%- set ns.names = [] -%}{%- set ns.k = 0 -%}"
    "{{- '<start_of_turn>model\\n' + text -}}"
    "{%- if m['tool_calls'] is defined and m['tool_calls'] -%}"
    "{%- for c in m['tool_calls'] -%}"
    "{%- set f = c['function'] if c['function'] is defined else c -%}"
    "{%- set a = f['arguments'] if f['arguments'] is defined else (f['args'] if f['args'] is defined else {}) -%}"
    "{%- set ns.names = ns.names + [f['name']] -%}"
    "{{- ('\\n' if text or not loop.first else '') + '<tool_call>\\n{\"name\": ' + "
    + _json_tool_text("f['name']")
    + " + ', \"args\": ' + ((a | replace('</', '<\\\\/')) if a is string else "
    + _json_tool_text("a")
    + ") + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- else -%}"
    "{%- if m['role'] == 'tool' -%}"
    "{%- set name = m['name'] if m['name'] is defined and m['name'] else "
    "(ns.names[ns.k] if ns.k < ns.names | length else 'tool') -%}"
    "{%- set ns.k = ns.k + 1 -%}"
    "{%- set c = m['content'] if m['content'] is string else '' -%}"
    "{%- set body = '{\"name\": ' + " + _json_tool_text("name") + " + ', \"result\": ' + "
    "((c | trim | replace('</', '<\\\\/')) if (c | trim)[:1] in ['{', '['] else " + _json_tool_text("c") + ") + '}' -%}"
    "{%- set text = '<tool_response>\\n' + body + '\\n</tool_response>' -%}"
    "{%- else -%}"
    "{%- set text = m['content'] | trim -%}"
    "{%- endif -%}"
    "{%- if ns.in_user -%}{{- '\\n' + text -}}"
    "{%- else -%}"
    "{{- '<start_of_turn>user\\n' + ((ns.prefix + '\\n\\n') if ns.prefix and not ns.used else '') + text -}}"
    "{%- set ns.used = true -%}{%- set ns.in_user = true -%}"
    "{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.in_user -%}{{- '<end_of_turn>\\n' -}}{%- endif -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)


def chat_template(system_prompt: str | None = None) -> str:
    prompt = (system_prompt or DEFAULT_TOOL_SYSTEM_PROMPT).strip()
    return CHAT_TEMPLATE.replace("SYSTEM_PROMPT", json.dumps(prompt))


OLLAMA_TEMPLATE = """{{- if or .System .Tools }}<start_of_turn>user
{{ if .System }}{{ .System }}

{{ end }}{{ if .Tools }}SYSTEM_PROMPT

<tools>
[{{ range $i, $t := .Tools }}{{ if $i }},
{{ end }}{"name": "{{ $t.Function.Name }}", "description": "{{ $t.Function.Description }}", "parameters": {{ $t.Function.Parameters }}}{{ end }}]
</tools>

{{ end }}{{ end }}{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ if or $i (not (or $.System $.Tools)) }}<start_of_turn>user
{{ end }}{{ $m.Content }}<end_of_turn>
{{ else if eq $m.Role "assistant" }}<start_of_turn>model
{{ $m.Content }}{{ range $m.ToolCalls }}<tool_call>
{"name": "{{ .Function.Name }}", "args": {{ .Function.Arguments }}}
</tool_call>{{ end }}<end_of_turn>
{{ else if eq $m.Role "tool" }}<start_of_turn>user
<tool_response>
{"name": "{{ $m.ToolName }}", "result": {{ $m.Content }}}
</tool_response><end_of_turn>
{{ end }}{{ end }}<start_of_turn>model
"""


def modelfile(gguf_name: str, system_prompt: str | None = None) -> str:
    prompt = (system_prompt or DEFAULT_TOOL_SYSTEM_PROMPT).strip()
    template = OLLAMA_TEMPLATE.replace("SYSTEM_PROMPT", prompt)
    return (
        f"# Ollama: ollama create gemma-tools -f Modelfile && ollama run gemma-tools\n"
        f"# The template renders gemma_tool_use's tool format (written by gemma_tool_use.export_gguf).\n"
        f'FROM ./{gguf_name}\nTEMPLATE """{template}"""\n'
        f'PARAMETER stop "<end_of_turn>"\nPARAMETER temperature 0\n'
    )


def _quantize(w: np.ndarray, kind: str):
    import gguf

    if kind == "f32":
        return w.astype(np.float32), None
    if kind == "f16":
        return w.astype(np.float16), None
    qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    return gguf.quants.quantize(w.astype(np.float32), qtype), qtype


@functools.lru_cache(maxsize=2)
def tokenizer_fields(path: str) -> dict:
    """{key: (value, GGUF type, array element type or None)} of the tokenizer fields of a GGUF.
    Cached: parsing the 262,144-token vocabulary takes seconds, and one export writes several files."""
    import gguf

    src = open_gguf(path)
    out = {}
    for key in _TOKENIZER_KEYS:
        field = src.fields.get(key)
        if field is not None:
            vtype = field.types[0]
            out[key] = (field.contents(), vtype, field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None)
    return out


def write_gguf(
    tensors: dict[str, np.ndarray],
    arch,
    out_path: str | Path,
    kind: str,
    *,
    name: str,
    tokenizer_gguf: str | Path,
    system_prompt: str | None = None,
) -> Path:
    """Write merged HF-named float32 `tensors` (export.merged_hf_tensors) as a llama.cpp Gemma 3 GGUF."""
    import gguf

    if kind not in GGUF_TYPES:
        raise ExportError(
            f"export.types: {kind!r} is not one of {', '.join(GGUF_TYPES)} (K-quants such as "
            "Q4_K_M: quantize the f16 file with llama.cpp's llama-quantize)"
        )
    fields = tokenizer_fields(str(tokenizer_gguf))
    vocab = len(fields["tokenizer.ggml.tokens"][0])
    if vocab != tensors["model.embed_tokens.weight"].shape[0]:
        raise ExportError(
            f"the model's vocabulary ({tensors['model.embed_tokens.weight'].shape[0]} rows) is not "
            f"the Gemma 3 tokenizer's ({vocab} tokens in {tokenizer_gguf})"
        )
    out_path = Path(out_path)
    tmp = out_path.with_name(out_path.name + ".tmp")
    w = gguf.GGUFWriter(str(tmp), "gemma3")
    w.add_name(name)
    w.add_context_length(32768)
    w.add_embedding_length(int(arch.embed_dim))
    w.add_block_count(int(arch.num_layers))
    w.add_feed_forward_length(int(arch.hidden_dim))
    w.add_head_count(int(arch.num_heads))
    w.add_head_count_kv(int(arch.num_kv_heads))
    w.add_key_length(int(arch.head_dim))
    w.add_value_length(int(arch.head_dim))
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(float(arch.global_base_frequency))
    w.add_sliding_window(int(arch.sliding_window_size))
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[kind]
    w.add_file_type(int(file_type))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for key, (value, vtype, sub_type) in fields.items():  # the same Gemma 3 vocabulary, same GGUF types
        if sub_type is not None:
            w.add_key_value(key, value, vtype, sub_type=sub_type)
        else:
            w.add_key_value(key, value, vtype)
    w.add_chat_template(chat_template(system_prompt))
    for hf_name, t in tensors.items():
        is_norm = t.ndim == 1
        data = (t.astype(np.float32) + 1.0) if is_norm else t
        data, qtype = (data.astype(np.float32), None) if is_norm else _quantize(data, kind)
        if qtype is None:
            w.add_tensor(hf_name_to_gguf(hf_name), np.ascontiguousarray(data))
        else:
            w.add_tensor(hf_name_to_gguf(hf_name), data, raw_dtype=qtype)  # shape from the bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.replace(out_path)
    return out_path


def roundtrip_errors(path: str | Path, tensors: dict[str, np.ndarray], back: dict | None = None) -> dict:
    """Read a written GGUF back (weights.gguf_to_hf_tensors, the loader `model.source=gguf` uses)
    and compare every tensor with what was written: max |difference| relative to max |value|."""
    back = gguf_to_hf_tensors(path) if back is None else back
    if set(back) != set(tensors):
        raise ExportError(f"{path}: tensors differ after reading back: {sorted(set(back) ^ set(tensors))[:5]}")
    worst = max(
        float(np.abs(back[k] - tensors[k]).max()) / max(float(np.abs(tensors[k]).max()), 1e-12) for k in tensors
    )
    return {"tensors": len(back), "max_rel_error": worst}
