"""Constrained decoding over one engine's vocabulary: the grammar's masks, and finishing in time.

Each step, the scheduler asks for the allowed tokens of all its constrained rows in one call
(``fill_masks``: llguidance computes them in parallel, without the GIL, while the forward pass
runs), masks their logits before sampling, and reports the sampled tokens (``advance``). Once
the grammar is complete only the end-of-generation tokens remain allowed, so the reply stops
there. Requests without a format share the steps and pay nothing.

Finishing in time: a reply cut off by its token budget (``max_tokens``, or the context) would
not parse, and a small or random model can run a JSON string on for ever. So each row knows its
budget, and as the budget runs low it measures how many tokens the shortest way out takes (the
closing policy: at each state the first allowed token of ``CLOSERS``, ending strings, objects
and arrays before anything else, and filling what the grammar still requires); when the rest
of the budget is just enough, the row follows that policy, one allowed token a step, to the
end of the grammar. A budget too small for even the shortest complete answer is refused up
front.
"""

from __future__ import annotations

import ctypes
import string
import threading
from typing import Any, Sequence

import numpy as np

from pyengine.structured.formats import Format, GrammarError, grammar_text, load_llguidance

# The closing policy's preference among the tokens a state allows: what ends a string, object
# or array first, then separators, '@' and '.' (the way out of an email or host name), the
# shortest values, any other single character, and what opens a structure last. End-of-
# generation tokens come before all of them. A token the policy took REPEAT_LIMIT times in a
# row is passed over (a pattern such as an email's local part accepts letters for ever).
CLOSERS = ('"', "}", "]", ":", ",", "@", ".", "0", "null", "false", "true", *"123456789",
           *(c for c in string.printable if c not in '"}]:,@.0123456789{[\t\n\r\x0b\x0c'),
           "{", "[")
REPEAT_LIMIT = 4
# Special tokens that close a structure in a model's own call syntax (Gemma 4's string
# delimiter and end of call), preferred to every text closer where the vocabulary has them: in
# a Gemma 4 string '"', '}' and ']' are plain text, and only the delimiter ends it.
SPECIAL_CLOSERS = ('<|"|>', "<tool_call|>")
# What a token must hold to open a structure, a string, a key or a value.
OPENERS = (b'"', b"[", b"{", b":", b",")
# Within sight of its budget's end, a row measures its way out every CHECK_EVERY tokens, and
# every token once within CHECK_SLACK tokens of needing it.
CHECK_EVERY = 8
CHECK_SLACK = 8
MAX_CLOSING = 512  # a closing path longer than this counts as none


class _Vocabulary:
    """A core's vocabulary as llguidance's tokenizer wrapper reads it: every token's bytes
    (special tokens marked by a leading 0xFF, so no grammar writes them as text), the end
    tokens, and the core's own tokenizer for the text a grammar forces."""

    def __init__(self, core: Any) -> None:
        # A token whose bytes are the bare marker would be a prefix of every special token, so
        # llguidance would let it through wherever one may come next (a Gemma 4 string's end
        # delimiter): special tokens with no text (unused ones) get a name of their own, and
        # the byte token <0xFF> (never valid UTF-8, so never text) is marked special.
        self.tokens = []
        self.special_token_ids = []
        for i, (piece, special) in enumerate(core.token_pieces()):
            if special or piece.startswith(b"\xff"):
                self.tokens.append(b"\xff" + (piece or f"<[unnamed {i}]>".encode()))
                self.special_token_ids.append(i)
            else:
                self.tokens.append(piece)
        self.eos_token_id = int(core.eos_id)
        self.bos_token_id = int(core.bos_id) if core.bos_id >= 0 else None
        self._core = core

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._core.tokenize(text, False, False))


class Row:
    """One request's grammar state: its llguidance matcher, its budget, and whether it is
    closing (following the closing policy to the end)."""

    def __init__(self, grammars: "Grammars", matcher: Any, budget: int) -> None:
        self.grammars = grammars
        self.matcher = matcher
        self.budget = budget        # tokens the request may still sample, its last included
        self.closing = False
        self.last = -1              # the last token consumed, and how many times in a row
        self.run = 0
        self.way_out_length = 0     # tokens the way out took when last measured
        self.jump = 0               # the most one token grew it (the root's cost at first)
        self._stale = True          # a token since then may have opened a structure
        self._checked_at = budget   # budget when it was last measured

    def way_out(self) -> int | None:
        """Tokens the closing policy takes from here to the end, end token included."""
        return self.grammars.closing_path_length(self.matcher, self.last, self.run)

    def consume(self, token: int) -> bool:
        self.budget -= 1
        self.run = self.run + 1 if token == self.last else 1
        self.last = token
        self._stale = self._stale or self.grammars.opens(token)
        return self.matcher.consume_token(token)

    def must_close(self) -> bool:
        """Whether to close now: when the budget left holds just the way out plus the largest
        growth one token gave it (a token may open a structure that costs that much more). The
        way out is measured, within sight of the budget's end, after a token that may open a
        structure, every CHECK_EVERY tokens, and every token once near."""
        if self.closing:
            return True
        reserve = self.way_out_length + 1 + self.jump
        if self.budget > 4 * reserve + 4 * CHECK_SLACK:
            return False  # far from the end: nothing opened now can matter yet
        near = self.budget <= reserve + CHECK_SLACK
        if not (near or self._stale or self._checked_at - self.budget >= CHECK_EVERY):
            return False
        length = self.way_out()
        self._checked_at = self.budget
        self._stale = False
        if length is None:  # no way out found: sample on, as without a budget
            return False
        self.jump = max(self.jump, length - self.way_out_length)
        self.way_out_length = length
        self.closing = self.budget <= length + 1 + self.jump
        return self.closing


class Grammars:
    """One engine's constrained decoding: the grammar tokenizer (built from its vocabulary on
    first use: about a second for Gemma's 262,144 tokens), the thread pool that computes masks,
    and the solver its scheduler calls."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._tokenizer: Any = None
        self._executor: Any = None
        self._solver: Any = None
        self._eog: list[int] = []
        self._closer_list: list[int] = []  # token ids in CLOSERS' order
        self._opens: np.ndarray = np.zeros(0, bool)  # [n_vocab] tokens that may open a structure

    def _ready(self) -> None:
        with self._lock:
            if self._tokenizer is not None:
                return
            llg = load_llguidance()
            vocab = _Vocabulary(self._core)
            eog = [int(t) for t in self._core.eog_ids]
            self._tokenizer = llg.LLTokenizer(llg.TokenizerWrapper(vocab),
                                              n_vocab=len(vocab.tokens), eos_token=eog)
            ids = {}
            for i, piece in enumerate(vocab.tokens):
                ids.setdefault(piece, i)
            self._eog = eog
            special = [b"\xff" + c.encode() for c in SPECIAL_CLOSERS]
            self._closer_list = [ids[c] for c in special if c in ids] \
                + [ids[c.encode()] for c in CLOSERS if c.encode() in ids]
            self._opens = np.array([any(c in piece for c in OPENERS) for piece in vocab.tokens],
                                   dtype=bool)
            self._executor = llg.LLExecutor()
            from pyengine import _core

            self._solver = _core.ConstraintSolver(self.fill_masks, self.advance)

    def matcher(self, fmt: Format) -> Any:
        """A fresh llguidance matcher of ``fmt``; ``GrammarError`` when it does not compile."""
        text = grammar_text(fmt)
        self._ready()
        m = load_llguidance().LLMatcher(self._tokenizer, text, log_level=0)
        if m.is_error():
            raise GrammarError(f"invalid format: {m.get_error()}")
        return m

    def constraint(self, fmt: Format, budget: int) -> Any:
        """The core's ``Constraint`` for one request whose output follows ``fmt`` within
        ``budget`` tokens; ``GrammarError`` when the format does not compile or its shortest
        complete answer does not fit the budget."""
        from pyengine import _core

        row = Row(self, self.matcher(fmt), budget)
        length = row.way_out()
        if length is not None and length > budget:
            raise GrammarError(f"a budget of {budget} tokens cannot hold a complete answer of "
                               f"this format (the shortest way to one takes {length} tokens): "
                               f"raise max_tokens")
        row.way_out_length = row.jump = length or 0
        return _core.Constraint(self._solver, row)

    # -- the closing policy ----------------------------------------------------------------

    def opens(self, token: int) -> bool:
        """Whether a token's text may open a structure (or a string, key or value)."""
        return bool(self._opens[token]) if 0 <= token < len(self._opens) else True

    def closing_token(self, matcher: Any, last: int = -1, run: int = 0) -> int | None:
        """The closing policy's token in the matcher's state, after ``last`` came ``run`` times
        in a row: its first allowed closer (``last`` passed over once it has come REPEAT_LIMIT
        times), else its first allowed token; None when it allows none."""
        if matcher.is_accepting():
            return self._eog[0]
        forced = matcher.compute_ff_tokens()  # what the grammar fixes here (a key, a brace)
        if forced:
            return int(forced[0])
        # Each closer is tried alone (about a microsecond), most closing first: a whole mask
        # over the vocabulary is computed only when none of them fits.
        for token in self._closer_list:
            if (token != last or run < REPEAT_LIMIT) and matcher.validate_tokens([token]) == 1:
                return token
        bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint32)
        words = np.flatnonzero(bits)
        if not words.size:
            return None
        w = int(words[0])
        return w * 32 + (int(bits[w]) & -int(bits[w])).bit_length() - 1

    def closing_path_length(self, matcher: Any, last: int = -1, run: int = 0) -> int | None:
        """Tokens the closing policy takes from the matcher's state (after ``last`` came
        ``run`` times) to its end, end token included; None when it finds no end within
        MAX_CLOSING tokens."""
        eog = set(int(t) for t in self._core.eog_ids)
        consumed = 0
        try:
            while consumed < MAX_CLOSING:
                token = self.closing_token(matcher, last, run)
                if token is None:
                    return None
                if token in eog:
                    return consumed + 1
                if not matcher.consume_token(token):
                    return None
                run = run + 1 if token == last else 1
                last = token
                consumed += 1
            return None
        finally:
            if consumed:
                matcher.rollback(consumed)

    # -- the solver the scheduler calls ----------------------------------------------------

    def fill_masks(self, rows: Sequence[Row], address: int, words: int) -> None:
        """Writes each row's allowed tokens into the bitmask at ``address`` ([len(rows),
        words] uint32): the grammar's mask, computed in parallel without the GIL, or for a
        closing row its closing token alone."""
        free = []
        closing = []
        for i, row in enumerate(rows):
            (closing if row.must_close() else free).append(i)
        if free:
            self._executor.unsafe_compute_mask_ptr([(rows[i].matcher, i) for i in free],
                                                   address, words * 4, len(rows))
        if closing:
            masks = np.ctypeslib.as_array((ctypes.c_uint32 * (len(rows) * words)).from_address(
                address)).reshape(len(rows), words)
            for i in closing:
                masks[i] = 0
                token = self.closing_token(rows[i].matcher, rows[i].last, rows[i].run)
                if token is not None:
                    masks[i, token >> 5] = np.uint32(1 << (token & 31))

    @staticmethod
    def advance(rows: Sequence[Row], tokens: Sequence[int]) -> list[str]:
        """Consumes each row's sampled token; per row "" or why the grammar refused it."""
        errors = []
        for row, t in zip(rows, tokens):
            ok = row.consume(int(t))
            errors.append("" if ok else (row.matcher.get_error() or f"token {t} is not allowed"))
        return errors
