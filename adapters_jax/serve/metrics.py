"""Server counters and timings, written as Prometheus text (`GET /metrics`)."""
from __future__ import annotations

import collections
import threading
import time

import numpy as np

PREFIX = "adapters_jax_"
HELP = {
    "queue_depth": "requests waiting for a row",
    "running_requests": "requests in the running batch",
    "batch_fill": "live rows / batch rows, mean over the last 100 steps",
    "tokens_per_second": "generated tokens per second over the last 10 s",
    "resident_adapters": "adapters in bank slots",
    "adapter_hits_total": "requests whose adapter was in a bank slot when first looked at",
    "adapter_misses_total": "requests whose adapter had to be written into a slot (read from disk first if needed)",
}


class Metrics:
    def __init__(self):
        self.counters = collections.Counter()
        self.samples = collections.defaultdict(lambda: collections.deque(maxlen=2000))
        self.fills = collections.deque(maxlen=100)
        self.tokens = collections.deque()  # (time, tokens) of recent steps
        self.lock = threading.Lock()

    def inc(self, name: str, n: float = 1) -> None:
        with self.lock:
            self.counters[name] += n
            if name == "generation_tokens_total" and n:
                self.tokens.append((time.monotonic(), n))

    def observe(self, name: str, value: float) -> None:
        with self.lock:
            self.samples[name].append(value)
            self.counters[name + "_sum"] += value
            self.counters[name + "_count"] += 1

    def step(self, live: int, rows: int, seconds: float) -> None:
        with self.lock:
            self.counters["steps_total"] += 1
            self.counters["step_rows_total"] += live
            self.fills.append(live / rows)
        self.observe("step_seconds", seconds)

    def tokens_per_second(self, window: float = 10.0) -> float:
        now = time.monotonic()
        with self.lock:
            while self.tokens and self.tokens[0][0] < now - window:
                self.tokens.popleft()
            return sum(n for _, n in self.tokens) / window

    def render(self, gauges: dict) -> str:
        g = dict(gauges)
        g["tokens_per_second"] = round(self.tokens_per_second(), 3)
        with self.lock:
            g["batch_fill"] = float(np.mean(self.fills)) if self.fills else 0.0
            counters = dict(self.counters)
            samples = {k: np.asarray(v) for k, v in self.samples.items()}
        lines = []
        for name, value in sorted(g.items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += _one(name, kind, value)
        for name, value in sorted(counters.items()):
            if name.endswith(("_sum", "_count")) and name.rsplit("_", 1)[0] in samples:
                continue
            lines += _one(name if name.endswith("_total") else name + "_total", "counter", value)
        for name, xs in sorted(samples.items()):
            full = PREFIX + name
            lines.append(f"# TYPE {full} summary")
            for q in (0.5, 0.9, 0.99):
                lines.append(f'{full}{{quantile="{q}"}} {float(np.quantile(xs, q)) if xs.size else 0.0:.6g}')
            lines.append(f"{full}_sum {counters.get(name + '_sum', 0.0):.6g}")
            lines.append(f"{full}_count {int(counters.get(name + '_count', 0))}")
        return "\n".join(lines) + "\n"


def _one(name, kind, value):
    full = PREFIX + name
    out = [f"# HELP {full} {HELP[name]}"] if name in HELP else []
    return out + [f"# TYPE {full} {kind}", f"{full} {value:.6g}" if isinstance(value, float) else f"{full} {value}"]
