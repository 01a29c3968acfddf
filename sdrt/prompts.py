"""Prompt -> text-encoder hidden states, with a bounded, thread-safe cache for repeated prompts.

Services send the same prompts (and the empty negative prompt) again and again; the text
encoder is skipped for those. Uncached prompts of one call are encoded as one batch.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from sdrt.arrays import namespace_of
from sdrt.sessions.base import Session
from sdrt.tokenizer import ClipTokenizer

DEFAULT_CACHE_SIZE = 64
HIDDEN_STATES = "last_hidden_state"


class PromptEncoder:
    """Encodes prompts with one tokenizer and text encoder; ``encode`` is thread-safe."""

    def __init__(
        self, tokenizer: ClipTokenizer, session: Session, cache_size: int = DEFAULT_CACHE_SIZE
    ):
        if cache_size < 0:
            raise ValueError(f"cache_size: expected >= 0, got {cache_size}")
        self.tokenizer = tokenizer
        self.session = session
        self.cache_size = cache_size
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        (ids_spec,) = [s for s in session.inputs if s.name == "input_ids"] or [None]
        if ids_spec is None:
            names = [s.name for s in session.inputs]
            raise ValueError(f"{session.name}: expected an input named 'input_ids', got {names}")
        self._ids_dtype = ids_spec.dtype

    def _lookup(self, prompt: str):
        with self._lock:
            value = self._cache.get(prompt)
            if value is not None:
                self._cache.move_to_end(prompt)
            return value

    def _store(self, prompt: str, value) -> None:
        if self.cache_size == 0:
            return
        with self._lock:
            self._cache[prompt] = value
            self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def encode(self, prompts: list[str]):
        """Hidden states (len(prompts), tokens, width), float32, in the session's namespace."""
        found = {p: self._lookup(p) for p in dict.fromkeys(prompts)}
        missing = [p for p, v in found.items() if v is None]
        if missing:
            ids = self.tokenizer(missing).astype(self._ids_dtype)
            hidden = self.session.run({"input_ids": ids})[HIDDEN_STATES]
            for i, prompt in enumerate(missing):
                row = hidden[i : i + 1].astype(namespace_of(hidden).float32)
                found[prompt] = row
                self._store(prompt, row)
        xp = namespace_of(next(iter(found.values())))
        return xp.concatenate([found[p] for p in prompts], axis=0)

    def cached_prompts(self) -> list[str]:
        with self._lock:
            return list(self._cache)
