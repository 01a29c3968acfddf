"""Prompt -> text-encoder hidden states, with a bounded, thread-safe cache for repeated prompts.

Services send the same prompts (and the empty negative prompt) again and again; the text
encoder is skipped for those. Uncached prompts of one call are encoded as one batch.
Which outputs condition the U-Net is the model folder's choice (sdrt.json's
``family_options``): SD 1.x/2.x use ``last_hidden_state``; SDXL the penultimate layer's
``hidden_states.N`` of both encoders, and the pooled ``text_embeds`` of the second.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any

from sdrt.arrays import namespace_of
from sdrt.backends.protocol import Session
from sdrt.stages import StageRecorder
from sdrt.tokenizer import ClipTokenizer

DEFAULT_CACHE_SIZE = 64
HIDDEN_STATES = "last_hidden_state"


class PromptEncoder:
    """Encodes prompts with one tokenizer and text encoder; ``encode`` is thread-safe."""

    def __init__(
        self,
        tokenizer: ClipTokenizer,
        session: Session,
        cache_size: int = DEFAULT_CACHE_SIZE,
        hidden_output: str = HIDDEN_STATES,
        pooled_output: str | None = None,
        extra_feeds: Mapping[str, Any] | None = None,
    ):
        if cache_size < 0:
            raise ValueError(f"cache_size: expected >= 0, got {cache_size}")
        self.tokenizer = tokenizer
        self.session = session
        self.cache_size = cache_size
        self.hidden_output = hidden_output
        self.pooled_output = pooled_output
        # Fed with every call: an enlarged token-embedding table (sdrt.adapters)
        self.extra_feeds = dict(extra_feeds or {})
        outputs = {s.name for s in session.outputs}
        for wanted in (hidden_output, pooled_output):
            if wanted is not None and wanted not in outputs:
                raise ValueError(
                    f"{session.name}: expected an output {wanted!r}, got {sorted(outputs)}"
                )
        self._cache: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        (ids_spec,) = [s for s in session.inputs if s.name == "input_ids"] or [None]
        if ids_spec is None:
            names = [s.name for s in session.inputs]
            raise ValueError(f"{session.name}: expected an input named 'input_ids', got {names}")
        self._ids_dtype = ids_spec.dtype

    def _lookup(self, prompt: Hashable):
        with self._lock:
            value = self._cache.get(prompt)
            if value is not None:
                self._cache.move_to_end(prompt)
            return value

    def _store(self, prompt: Hashable, value) -> None:
        if self.cache_size == 0:
            return
        with self._lock:
            self._cache[prompt] = value
            self._cache.move_to_end(prompt)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def encode(self, prompts: list[str]):
        """Hidden states (len(prompts), tokens, width), float32, in the session's namespace."""
        return self.encode_with_pooled(prompts)[0]

    def encode_with_pooled(
        self,
        prompts: list[str],
        stages: StageRecorder | None = None,
        weights: Mapping[str, Any] | None = None,
        weights_key: Hashable = None,
    ):
        """(hidden states, pooled embeddings or None), one row per prompt; ``stages``
        times the tokenizer and the text encoder (named as its session) when they run.
        ``weights`` are extra feeds (run-time LoRA); results are cached apart under
        ``weights_key`` when it is not None (the encoder's weights differ from the base's)."""
        stages = stages or StageRecorder()
        weights = weights or {}
        key = (lambda p: p) if weights_key is None else (lambda p: (weights_key, p))
        found = {p: self._lookup(key(p)) for p in dict.fromkeys(prompts)}
        missing = [p for p, v in found.items() if v is None]
        if missing:
            with stages.stage("tokenize"):
                ids = self.tokenizer(missing).astype(self._ids_dtype)
            with stages.stage(self.session.name):
                outputs = self.session.run({"input_ids": ids, **self.extra_feeds, **weights})
            hidden = outputs[self.hidden_output]
            xp = namespace_of(hidden)
            pooled = None if self.pooled_output is None else outputs[self.pooled_output]
            for i, prompt in enumerate(missing):
                row = (
                    hidden[i : i + 1].astype(xp.float32),
                    None if pooled is None else pooled[i : i + 1].astype(xp.float32),
                )
                found[prompt] = row
                self._store(key(prompt), row)
        rows = [found[p] for p in prompts]
        xp = namespace_of(rows[0][0])
        hidden = xp.concatenate([r[0] for r in rows], axis=0)
        pooled = None if rows[0][1] is None else xp.concatenate([r[1] for r in rows], axis=0)
        return hidden, pooled

    def cached_prompts(self) -> list[str]:
        with self._lock:
            return [p for p in self._cache if isinstance(p, str)]  # the base weights' ones
