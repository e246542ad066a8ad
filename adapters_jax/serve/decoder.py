"""The running batch of a decoder: B rows of one KV cache, requests joining and leaving between steps.

Each step decodes every row at once (kernels.py); a row finishes at its
end-of-sequence token, a stop string or max_tokens, and its row is free for
the next request at the next step (iteration-level, "continuous" batching).
The cache's write index is shared, so a request may join only when its prompt
fits below the index and every row's remaining tokens fit above it; when they
do not, the cache is compacted (live slots moved to the front) first.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from adapters_jax.decoding import prompt_bucket
from adapters_jax.models import kv_cache
from adapters_jax.serve.kernels import rows_bucket


@dataclasses.dataclass
class Row:
    req: object
    slot: int
    position: int  # the position of the token fed at the next step
    ids: list = dataclasses.field(default_factory=list)
    sent: int = 0  # characters of text already emitted

    @property
    def remaining(self) -> int:
        return self.req.sampling.max_tokens - len(self.ids)


def _holdback(text: str, stops) -> int:
    """Characters at the end of `text` not to emit yet: a possible start of a stop string, a partial character."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), n, -1):
            if text.endswith(s[:k]):
                n = k
                break
    while n < len(text) and text[len(text) - 1 - n] == "\ufffd":
        n += 1
    return n


class RunningBatch:
    def __init__(self, kernels, config, max_batch: int, slots: int, n_soft: int, eos: int | None, tokenizer, dtype):
        self.k, self.config, self.b, self.s = kernels, config, max_batch, slots
        self.n_soft, self.eos, self.tok = n_soft, eos, tokenizer
        self.rows: list[Row | None] = [None] * max_batch
        self.cache = kv_cache.init(config, max_batch, slots, dtype)
        self.pointer = 0
        self.compactions = 0

    @property
    def live(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r is not None]

    def free_rows(self) -> int:
        return sum(r is None for r in self.rows)

    def join_slots(self, n_prompt: int) -> int:
        return prompt_bucket(n_prompt) + self.n_soft

    def fits(self, joining: list, compacted: bool = False) -> bool:
        """Whether requests `joining` (with the running rows) fit in the cache's slots now, or after compact()."""
        t = max([self.join_slots(len(r.prompt)) for r in joining], default=0)
        ptr = self.pointer
        if compacted:  # the live rows' slots: their prompt bucket's real tokens + soft prompt + tokens so far
            ptr = max([len(r.req.prompt) + self.n_soft + len(r.ids) for r in self.rows if r is not None], default=0)
        ptr = max(ptr, t)
        need = [r.remaining for r in self.rows if r is not None] + [r.sampling.max_tokens for r in joining]
        return ptr + max(need, default=0) <= self.s

    def shapes(self, max_prompt: int) -> list[tuple[int, int]]:
        """Every (rows, prompt bucket) a join can be prefilled with, prompts up to max_prompt tokens."""
        rows = sorted({rows_bucket(n, self.b) for n in range(1, self.b + 1)})
        buckets = sorted({prompt_bucket(n) for n in range(1, max_prompt + 1)})
        return [(nb, t) for t in buckets for nb in rows]

    def join(self, params, items: list) -> list:
        """Prefill requests `items` [(req, slot)] into free rows; returns [(row, first token)]."""
        t = prompt_bucket(max(len(r.prompt) for r, _ in items))
        free = [i for i, r in enumerate(self.rows) if r is None][:len(items)]
        token_n = self._prefill(params, items, free, rows_bucket(len(items), self.b), t)
        self.pointer = max(self.pointer, t + self.n_soft)
        out = []
        for i, (r, s) in enumerate(items):
            self.rows[free[i]] = Row(r, s, len(r.prompt))
            out.append((free[i], int(token_n[i])))
        return out

    def _prefill(self, params, items: list, free: list, nb: int, t: int) -> np.ndarray:
        """Prefill `items` in nb rows of t slots (left padded) and copy them into rows `free` of the cache."""
        n = len(items)
        ids = np.zeros((nb, t), np.int32)
        mask = np.zeros((nb, t), np.int32)
        mask[:, -1] = 1  # padding rows see one token, so no row is all masked
        for i, (r, _) in enumerate(items):
            ids[i, t - len(r.prompt):], mask[i, :] = r.prompt, 0
            mask[i, t - len(r.prompt):] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
        rows_n = np.full((nb,), self.b, np.int32)  # row b is out of range: dropped (padding)
        rows_n[:n] = free
        slots_B = np.full((nb,), -1, np.int32)
        slots_B[:n] = [s for _, s in items]
        part = kv_cache.init(self.config, nb, t + self.n_soft, self.cache["layers"][0][0].dtype)
        temp, topk, topp, seed = _sampling([r for r, _ in items], nb)
        token_n, part = self.k.prefill(params, ids, mask, positions, part, slots_B, temp, topk, topp, seed)
        if part["prefixes"] is not None and self.cache["prefixes"] is None:
            self.cache["prefixes"] = tuple((jnp.zeros((self.b,) + k.shape[1:], k.dtype),
                                            jnp.zeros((self.b,) + v.shape[1:], v.dtype)) for k, v in part["prefixes"])
        self.cache = self.k.insert(self.cache, part, jnp.asarray(rows_n))
        return np.asarray(token_n)

    def warm(self, params, max_prompt: int) -> int:
        """Compile every program the batch can run (each join shape, the decode step, compaction) on empty
        rows, before serving; returns how many join shapes. The batch is left empty."""
        assert not self.live, "warm() is for an idle batch"
        shapes = self.shapes(max_prompt)
        for nb, t in shapes:
            self._prefill(params, [], [], nb, t)  # every row is padding: the cache is unchanged
        self._decode(params)
        self.compact()
        self.cache = {**kv_cache.init(self.config, self.b, self.s, self.cache["layers"][0][0].dtype),
                      "prefixes": self.cache["prefixes"]}
        self.pointer, self.compactions = 0, 0
        return len(shapes)

    def compact(self) -> bool:
        """Move live slots to the front; True if the write index went down."""
        live_B = np.asarray([r is not None for r in self.rows], np.int32)
        self.cache, count_B = self.k.compact(self.cache, jnp.asarray(live_B))
        new = int(np.max(np.asarray(count_B))) if live_B.any() else 0
        self.compactions += 1
        went_down, self.pointer = new < self.pointer, new
        return went_down

    def step(self, params) -> list:
        """One decode step for every row; returns [(row, token)] of the live rows."""
        live = self.live
        token_B = self._decode(params)
        self.pointer += 1
        for i in live:
            self.rows[i].position += 1
        return [(i, int(token_B[i])) for i in live]

    def _decode(self, params) -> np.ndarray:
        b = self.b
        token, position, slots = np.zeros(b, np.int32), np.zeros(b, np.int32), np.full(b, -1, np.int32)
        step = np.zeros(b, np.int32)
        live = self.live
        for i in live:
            row = self.rows[i]
            token[i], position[i], slots[i], step[i] = row.ids[-1], row.position, row.slot, len(row.ids)
        temp, topk, topp, seed = _sampling([self.rows[i].req if i in live else None for i in range(b)], b)
        self.cache = {**self.cache, "index": jnp.int32(self.pointer)}
        token_B, self.cache = self.k.decode(params, token, self.cache, position, slots, temp, topk, topp, seed, step)
        return np.asarray(token_B)

    def push(self, i: int, token: int):
        """Add a sampled token to row i; returns (text delta, finish_reason or None)."""
        row = self.rows[i]
        sp = row.req.sampling
        if self.eos is not None and token == self.eos and not sp.ignore_eos:
            return self._rest(row), "stop"
        row.ids.append(token)
        if self.tok is None:
            return "", ("length" if len(row.ids) >= sp.max_tokens else None)
        text = self.tok.decode(row.ids)
        if sp.stop:
            cut = min((text.find(s) for s in sp.stop if s in text), default=-1)
            if cut >= 0:
                row.req.final_text = text[:cut]
                delta, row.sent = text[row.sent:cut], cut
                return delta, "stop"
        if len(row.ids) >= sp.max_tokens:
            delta, row.sent = text[row.sent:], len(text)
            return delta, "length"
        end = len(text) - _holdback(text, sp.stop)
        delta = text[row.sent:end] if end > row.sent else ""
        row.sent = max(row.sent, end)
        return delta, None

    def _rest(self, row: Row) -> str:
        if self.tok is None:
            return ""
        text = self.tok.decode(row.ids)
        delta, row.sent = text[row.sent:], len(text)
        return delta

    def text_of(self, i: int) -> str:
        row = self.rows[i]
        if getattr(row.req, "final_text", None) is not None:
            return row.req.final_text
        return self.tok.decode(row.ids) if self.tok is not None else ""

    def drop(self, i: int) -> Row:
        row, self.rows[i] = self.rows[i], None
        return row


def _sampling(reqs: list, n: int):
    """Per-row sampling arrays for `reqs` (None for an empty or padding row: greedy)."""
    temp, topk, topp, seed = np.zeros(n, np.float32), np.zeros(n, np.int32), np.ones(n, np.float32), \
        np.zeros(n, np.uint32)
    for i, r in enumerate(reqs):
        if r is not None:
            sp = r.sampling
            temp[i], topk[i], topp[i], seed[i] = sp.temperature, sp.top_k, sp.top_p, sp.seed
    return temp, topk, topp, seed
