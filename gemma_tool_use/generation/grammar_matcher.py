"""Token masks from grammars, for the generator's decode loop: llguidance on Gemma's vocabulary.

Why llguidance (experiments/constrained_decoding/README.md has the figures): it takes a Lark
grammar with JSON Schemas inline, compiles a new grammar in ~2 ms (every BFCL entry offers its own
tools), computes a mask in tens of microseconds inside JSON, runs a batch of matchers on threads
without the GIL, and depends on nothing. xgrammar needs torch; outlines-core compiles a regex
index per schema in seconds.

* `grammar_tokenizer(tokenizer, stop_ids)`: llguidance's view of the vocabulary, built from the
  SentencePiece pieces (byte tokens as their byte, `▁` as a space). Only control ids are
  special: Gemma's ~70 user-defined tag tokens (`<b>`, `<table>`) are text here, as they are for
  the model. The stop ids are llguidance's end-of-sequence tokens: the mask allows them exactly
  when the grammar is complete.
* `GrammarCache`: compiles each distinct grammar once (a template matcher, copied per row in
  ~15 us). A grammar llguidance cannot compile makes its rows unconstrained, counted in
  `warnings` and logged once per grammar, never a failed batch.
* `RowMatchers`: one matcher per batch row, and `masks(...)`, the host side of the decode loop's
  callback: consume each row's last token, then write each row's allowed-token bitmask
  (int32 words, bit j of word w = token 32*w + j). Rows without a matcher get all ones.
"""

from __future__ import annotations

import collections
import logging
import os
from functools import lru_cache

import numpy as np

log = logging.getLogger(__name__)

# grammar-compile failures and rejected tokens, by kind, for the run's summary
GRAMMAR_FAILED = "grammar_failed"  # a row ran unconstrained: its grammar did not compile
TOKEN_REJECTED = "token_rejected"  # a row went unconstrained mid-way: its matcher refused a token


def _llguidance():
    import llguidance
    import llguidance.numpy

    return llguidance


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: token byte strings, special ids, an encoder."""

    def __init__(self, processor, stop_ids):
        self.eos_token_id = int(stop_ids[0])
        self.bos_token_id = None
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        self._processor = processor
        for i in range(processor.GetPieceSize()):
            piece = processor.IdToPiece(i)
            if processor.IsByte(i):  # "<0x0A>"
                self.tokens.append(bytes([int(piece[3:5], 16)]))
            elif processor.IsControl(i) or processor.IsUnknown(i):
                self.tokens.append(b"\xff" + piece.encode())  # llguidance's mark of a special token
                self.special_token_ids.append(i)
            else:
                self.tokens.append(piece.replace("\u2581", " ").encode("utf-8"))

    def __call__(self, text) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._processor.EncodeAsIds(text)


@lru_cache(maxsize=4)
def _grammar_tokenizer(processor, stop_ids: tuple[int, ...]):
    llg = _llguidance()
    return llg.LLTokenizer(llg.TokenizerWrapper(_Vocabulary(processor, stop_ids)), eos_token=list(stop_ids))


def grammar_tokenizer(tokenizer, stop_ids) -> object:
    """llguidance's LLTokenizer for a GemmaTokenizer (~1.5 s to build; cached per process)."""
    return _grammar_tokenizer(tokenizer.processor, tuple(int(s) for s in stop_ids))


@lru_cache(maxsize=1)
def _executor():
    # mask computation runs on these threads without the GIL, beside XLA's own
    return _llguidance().LLExecutor(num_threads=max(1, min(8, os.cpu_count() or 1)))


class GrammarCache:
    """Compiled grammars by their text, each compiled once; counts the rows left unconstrained."""

    def __init__(self, grammar_tokenizer, max_grammars: int = 2048):
        self.tokenizer = grammar_tokenizer
        self.max_grammars = int(max_grammars)
        self._templates: collections.OrderedDict[str, object] = collections.OrderedDict()
        self.warnings: collections.Counter = collections.Counter()

    def matcher(self, grammar: str | None):
        """A fresh matcher at the start of `grammar`, or None (no grammar, or one that fails)."""
        if grammar is None:
            return None
        if grammar in self._templates:
            self._templates.move_to_end(grammar)
            template = self._templates[grammar]
        else:
            template = self._compile(grammar)
            self._templates[grammar] = template
            if len(self._templates) > self.max_grammars:
                self._templates.popitem(last=False)
        if template is None:
            self.warnings[GRAMMAR_FAILED] += 1
            return None
        return template.deep_copy()

    def first_refused(self, grammar: str, token_ids) -> int | None:
        """Where `grammar` refuses the token sequence `token_ids` (its index; len(token_ids) when
        all are taken but the grammar is not complete), or None when it accepts all of them and is
        then complete. The sequence should end with a stop id. Raises ValueError for a grammar
        that does not compile."""
        matcher = self.matcher(grammar)
        if matcher is None:
            raise ValueError("the grammar does not compile")
        for k, t in enumerate(token_ids):
            if not matcher.consume_token(int(t)):
                return k
        return None if matcher.is_stopped() or matcher.is_accepting() else len(token_ids)

    def _compile(self, grammar: str):
        llg = _llguidance()
        try:
            matcher = llg.LLMatcher(self.tokenizer, llg.LLMatcher.grammar_from_lark(grammar), log_level=0)
        except Exception as e:  # llguidance raises only on API misuse; a bad grammar sets is_error
            log.warning("grammar not compiled (rows run unconstrained): %s", e)
            return None
        if matcher.is_error():
            log.warning("grammar not compiled (rows run unconstrained): %.500s", matcher.get_error())
            return None
        return matcher


class RowMatchers:
    """One matcher per decode row (None: unconstrained) and the mask callback's host side."""

    def __init__(self, cache: GrammarCache, rows: int, vocab_size: int):
        self.cache = cache
        self.matchers: list = [None] * rows
        self.words = (int(vocab_size) + 31) // 32
        if cache.tokenizer.vocab_size > 32 * self.words:
            raise ValueError(f"grammar vocabulary {cache.tokenizer.vocab_size} > model vocabulary {vocab_size}")

    def assign(self, row: int, grammar: str | None) -> None:
        self.matchers[row] = self.cache.matcher(grammar)

    def masks(self, rows, tokens, consume, need) -> np.ndarray:
        """For decode rows `rows` [n]: consume `tokens` where `consume`, then the bitmask of the
        next token where `need` (all ones elsewhere and for unconstrained rows): int32 [n, words]."""
        llg = _llguidance()
        rows, tokens = np.asarray(rows), np.asarray(tokens)
        consume, need = np.asarray(consume), np.asarray(need)
        eat = list(
            {
                int(r): int(t) for r, t, c in zip(rows, tokens, consume) if c and self.matchers[int(r)] is not None
            }.items()
        )
        if eat:
            ok = _executor().consume_token_par([(self.matchers[r], t) for r, t in eat])
            for (r, t), accepted in zip(eat, ok):
                if not accepted:
                    log.warning("grammar refused token %d in row %d; the row continues unconstrained", t, r)
                    self.cache.warnings[TOKEN_REJECTED] += 1
                    self.matchers[r] = None
        bitmask = np.full((len(rows), self.words), -1, np.int32)
        # a row listed twice (the refill's padding repeats a slot) is computed once and copied:
        # a matcher cannot be borrowed by two threads
        first: dict[int, int] = {}
        for k, r in enumerate(rows):
            if need[k] and self.matchers[int(r)] is not None:
                first.setdefault(int(r), k)
        if first:
            fill = [(self.matchers[r], k) for r, k in first.items()]
            llg.numpy.fill_next_token_bitmask_par(_executor(), fill, bitmask)
            for k, r in enumerate(rows):
                if int(r) in first and first[int(r)] != k:
                    bitmask[k] = bitmask[first[int(r)]]
        return bitmask
