"""What the HTTP layer hands the engine: a request, its sampling parameters, and the refusals it can meet."""
from __future__ import annotations

import dataclasses
import queue
import secrets

from adapters_jax.errors import AdaptersJaxError


class QueueFull(AdaptersJaxError):
    """The waiting queue is full: try again later (HTTP 429)."""


class UnknownAdapter(AdaptersJaxError, KeyError):
    """No adapter of that name is registered (HTTP 404)."""


@dataclasses.dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple = ()
    ignore_eos: bool = False


class Request:
    """One request; `on_event(kind, payload)` is called from the engine thread (default: a queue for events())."""

    def __init__(self, kind: str, adapter: str | None, prompt, sampling: Sampling | None = None, on_event=None):
        self.kind, self.adapter, self.prompt = kind, adapter, prompt
        self.sampling = sampling or Sampling()
        if self.sampling.seed is None:
            self.sampling.seed = secrets.randbelow(2 ** 31)
        self.cancelled = False
        self.final_text = None
        self.t_submit = self.t_first = None
        self.hit_counted = False
        self._q = None
        if on_event is None:
            self._q = queue.SimpleQueue()
            on_event = lambda kind, payload: self._q.put((kind, payload))  # noqa: E731
        self.on_event = on_event

    def events(self, timeout: float | None = None):
        """Events until the last ("done", "result" or "error"), for a request made without on_event."""
        while True:
            kind, payload = self._q.get(timeout=timeout)
            yield kind, payload
            if kind in ("done", "result", "error"):
                return
