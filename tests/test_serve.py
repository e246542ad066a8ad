"""The server (scripts/serve.py) started for real on 127.0.0.1 in a subprocess, talked to over HTTP.

One decoder server per module (tiny Llama, three LoRA adapters of different ranks and alphas saved at setup,
two bank slots so mixed traffic evicts, batch 2, 32-token context, warmed up at startup: it compiles while the
references are computed, and no request after that compiles anything) and one encoder engine behind the app in
process (tiny BERT, heads per adapter). Completions through an adapter equal aj.generate with that adapter
alone (greedy ids); concurrent mixed requests equal each alone; hot load/unload without a new compiled program;
400/404/429; disconnects; SIGTERM drains.
"""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jax
import numpy as np
import pytest

import adapters_jax as aj
from adapters_jax import paths
from adapters_jax.models import heads

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures"
SPECS = {"t0": "lora[r=4]", "t1": "lora[r=8,alpha=16]", "t2": "lora[r=2]"}
GREEDY = {"temperature": 0, "ignore_eos": True}


def perturbed(base, spec, name, seed, head=None):
    """base + adapter `spec` whose adapter (and head) leaves are random, so no adapter is the identity (traced, not
    initialised: the random leaves replace the zeros)."""
    model, params = aj.add_adapters(base, spec, name=name, head=head, init=False)
    rng = np.random.RandomState(seed)
    flat = {k: (v + 0.3 * rng.randn(*v.shape).astype(np.float32) if paths.adapter_of(k) == name or paths.is_head(k)
                else v)
            for k, v in paths.flat(params).items()}
    return model, paths.unflat(flat)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args, log_path):
    port = free_port()
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts/serve.py"), "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc, url, log_path):
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {Path(log_path).read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    pytest.fail("server did not come up")


PROMPTS = [[5, 9, 12, 7], [3, 4], [8, 8, 8, 2, 11], [6], list(range(1, 15)), [200, 100]]
MIXED = ["t0", "t1", None, "t2", "t1", "t0"]


@pytest.fixture(scope="module", autouse=True)
def server(tmp_path_factory):
    """The decoder server, started before anything else in this module: it boots and warms up while the in-process
    work (the encoder engine, the references) runs. Its adapters are saved first."""
    d = tmp_path_factory.mktemp("serve")
    base = aj.load(FIX / "tiny-llama")
    model, params = base.model, base.params
    names = [*SPECS, "late"]
    for i, name in enumerate(names):
        model, params = perturbed((model, params), SPECS.get(name, "lora[r=8]"), name, seed=i)
        aj.save_adapter(d / ("adapters" if name != "late" else "") / name, model, params, name)
    aj.save_adapter(d / "other_base", model, params, "late", base_fingerprint={"architecture": "another"})
    aj.save_adapter(d / "corrupt", model, params, "late")
    w = d / "corrupt" / "adapter.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    flat = paths.flat(params)
    nan_at = next(k for k in sorted(flat) if paths.adapter_of(k) == "late" and k.endswith("lora_B"))
    aj.save_adapter(d / "nan", model, paths.unflat({**flat, nan_at: flat[nan_at].at[0, 0].set(np.nan)}), "late")
    log = d / "server.log"
    proc, url = start(["--model", str(FIX / "tiny-llama"), "--adapters", str(d / "adapters"), "--max-resident", "2",
                       "--max-batch", "2", "--max-queue", "8", "--max-model-len", "32"], log)
    yield {"url": url, "proc": proc, "dir": d, "log": log, "model": model, "params": params, "names": names}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def llama(server):
    """The server, up, and the references: greedy completions from aj.generate through an in-process bank of the
    same adapters (each member's own LoRA scaling, static: the library's path; tests/test_bank.py shows each row
    equals its adapter alone)."""
    model, params, names = server["model"], server["params"], server["names"]
    model, params = aj.bank.build((model, params), names)
    model = aj.activate(model)
    pairs = list(zip(MIXED, PROMPTS)) + [("late", PROMPTS[0])]
    outs = aj.generate(model, params, [p for _, p in pairs], 12, ignore_eos=True,
                       adapter_ids=[-1 if n is None else names.index(n) for n, _ in pairs])
    refs = {(n, tuple(p)): o.ids for (n, p), o in zip(pairs, outs)}
    url, log = server["url"], server["log"]
    wait_up(server["proc"], url, log)
    programs = metrics(url)["adapters_jax_compiled_programs"]  # all of them: the warm-up compiled every shape
    assert "warm-up compiled" in log.read_text()
    return {**server, "refs": refs, "programs": programs}


def want(refs, name, prompt, n):
    return refs[(name, tuple(prompt))][:n]


def metrics(url) -> dict:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """An encoder engine (tiny BERT, two adapters with heads of 2 and 3 labels) behind the app, in process, warmed
    up (batches of 1 and 2 inputs of up to 16 tokens)."""
    from safetensors.numpy import save_file
    from starlette.testclient import TestClient

    from adapters_jax.serve.engine import Engine
    from adapters_jax.serve.http import make_app

    d = tmp_path_factory.mktemp("serve_bert")
    base = aj.load(FIX / "adapters" / "tiny-bert")
    refs = {}
    for i, n_labels in enumerate([2, 3]):
        model, params = perturbed(base, "lora[r=4]", "a", seed=10 + i, head=heads.Classification(n_labels))
        out = aj.save_adapter(d / f"c{i}", model, params, "a")
        save_file({k: np.asarray(v) for k, v in paths.flat(params).items() if k.startswith("head/")},
                  str(out / "head.safetensors"))
        (out / "head_config.json").write_text(json.dumps({"labels": [f"l{j}" for j in range(n_labels)]}))
        refs[f"c{i}"] = (model, params)
    engine = Engine(base, adapters_dir=d, max_resident=2, max_batch=2, max_model_len=16, name="tiny-bert",
                    warmup=True)
    with TestClient(make_app(engine)) as client:
        yield client, refs, engine


def test_classify_with_a_head_per_adapter_equals_each_alone(bert):
    client, refs, engine = bert
    programs = engine.compiled()
    inputs = [[5, 9, 12, 7], [3, 4, 8, 8, 2, 11, 1]]
    for name in ("c0", "c1"):
        r = client.post("/v1/classify", json={"model": name, "input": inputs})
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        model, params = refs[name]
        ids_BxT, mask_BxT = np.zeros((2, 7), np.int32), np.zeros((2, 7), np.int32)  # right padded, as BERT is
        for i, ids in enumerate(inputs):
            ids_BxT[i, :len(ids)], mask_BxT[i, :len(ids)] = ids, 1
        logits_BxL = np.asarray(jax.jit(model.apply)({"params": params}, ids_BxT, mask_BxT))
        for i, ids in enumerate(inputs):
            p = np.exp(logits_BxL[i] - logits_BxL[i].max())
            p /= p.sum()
            assert data[i]["num_classes"] == len(p) and data[i]["label"] == f"l{int(p.argmax())}"
            np.testing.assert_allclose(data[i]["probs"], p, atol=1e-5)
    r = client.post("/v1/classify", json={"model": "c9", "input": [1, 2]})
    assert r.status_code == 404
    assert engine.compiled() == programs == engine.warmed["programs"]  # the warm-up compiled every shape


def test_mixed_adapters_concurrently_equal_each_alone(llama):
    url, refs = llama["url"], llama["refs"]
    names = [n or "tiny-llama" for n in MIXED]

    async def go():
        async with httpx.AsyncClient(timeout=60) as c:
            rs = await asyncio.gather(*[c.post(url + "/v1/completions", json={"model": n, "prompt": p,
                                                                              "max_tokens": 12, **GREEDY})
                                        for n, p in zip(names, PROMPTS)])
            return [r.json() for r in rs]

    for n, p, body in zip(names, PROMPTS, asyncio.run(go())):
        assert body["choices"][0]["token_ids"] == want(refs, None if n == "tiny-llama" else n, p, 12), n
        assert body["usage"] == {"prompt_tokens": len(p), "completion_tokens": 12, "total_tokens": len(p) + 12}
    m = metrics(url)
    assert m["adapters_jax_resident_adapters"] == 2 and m["adapters_jax_slot_evictions_total"] >= 1
    assert m["adapters_jax_compiled_programs"] == llama["programs"]  # warmed at startup: no request compiled


def test_streaming_sends_the_same_tokens_then_done(llama):
    url, refs = llama["url"], llama["refs"]
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"model": "t1", "prompt": PROMPTS[1], "max_tokens": 7, "stream": True,
                            "stream_options": {"include_usage": True}, **GREEDY}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    ids = [t for c in chunks for ch in c["choices"] for t in ch.get("token_ids", [])]
    assert ids == want(refs, "t1", PROMPTS[1], 7)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 7


def test_seeded_sampling_is_per_request(llama):
    """A seed gives the same draw alone and beside other requests (each row has its own key and filters)."""
    url = llama["url"]
    body = {"model": "t0", "prompt": PROMPTS[2], "max_tokens": 8, "temperature": 0.8, "top_k": 20, "top_p": 0.9,
            "seed": 3, "ignore_eos": True}
    alone = httpx.post(url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["token_ids"]

    async def go():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*[c.post(url + "/v1/completions", json=b) for b in [
                {**body, "model": "t1", "temperature": 1.5, "seed": 9}, body, {**body, "seed": 4},
                {"model": "t2", "prompt": PROMPTS[0], "max_tokens": 8, **GREEDY}]])

    mixed = [r.json()["choices"][0]["token_ids"] for r in asyncio.run(go())]
    assert mixed[1] == alone and mixed[2] != alone
    assert metrics(url)["adapters_jax_compiled_programs"] == llama["programs"]  # any sampling: the same programs


def test_hot_load_and_unload_without_recompiling(llama):
    url, refs, d = llama["url"], llama["refs"], llama["dir"]
    warm = {"model": "t0", "prompt": PROMPTS[0], "max_tokens": 6, **GREEDY}
    assert httpx.post(url + "/v1/completions", json=warm, timeout=60).status_code == 200
    before = metrics(url)["adapters_jax_compiled_programs"]
    r = httpx.post(url + "/v1/load_adapter", json={"lora_name": "late", "lora_path": str(d / "late")}, timeout=60)
    assert r.status_code == 200, r.text
    assert "late" in [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    got = httpx.post(url + "/v1/completions", json={**warm, "model": "late"}, timeout=60).json()
    assert got["choices"][0]["token_ids"] == want(refs, "late", PROMPTS[0], 6)
    assert metrics(url)["adapters_jax_compiled_programs"] == before  # written into a slot, nothing recompiled
    assert httpx.post(url + "/v1/unload_adapter", json={"lora_name": "late"}).status_code == 200
    r = httpx.post(url + "/v1/completions", json={**warm, "model": "late"}, timeout=60)
    assert r.status_code == 404 and "`late`" in r.json()["error"]["message"]
    # the name again, other weights: served with the new ones, not the old slot's
    r = httpx.post(url + "/v1/load_adapter", json={"lora_name": "late", "lora_path": str(d / "adapters" / "t0")})
    assert r.status_code == 200, r.text
    got = httpx.post(url + "/v1/completions", json={**warm, "model": "late"}, timeout=60).json()
    assert got["choices"][0]["token_ids"] == want(refs, "t0", PROMPTS[0], 6)
    assert httpx.post(url + "/v1/unload_adapter", json={"lora_name": "late"}).status_code == 200
    assert metrics(url)["adapters_jax_compiled_programs"] == before


def test_bad_adapter_directories_are_refused_with_the_cause(llama):
    url, d = llama["url"], llama["dir"]
    r = httpx.post(url + "/v1/load_adapter", json={"lora_name": "x", "lora_path": str(d / "other_base")}, timeout=60)
    assert r.status_code == 400 and "another base" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/load_adapter", json={"lora_name": "x", "lora_path": str(d / "corrupt")}, timeout=60)
    assert r.status_code == 400 and "cannot be read" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/load_adapter", json={"lora_name": "x", "lora_path": str(d / "nan")}, timeout=60)
    assert r.status_code == 400 and "lora_B holds NaN or infinite values" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/load_lora_adapter", json={"lora_name": "x"})
    assert r.status_code == 400 and "lora_path" in r.json()["error"]["message"]
    ok = httpx.post(url + "/v1/completions", json={"model": "t2", "prompt": [1, 2], "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200  # still serving


@pytest.mark.parametrize("body,status,says", [
    ({"model": "nope", "prompt": [1], "max_tokens": 2}, 404, "`nope` does not exist"),
    ({"model": "t0", "max_tokens": 2}, 400, "missing required field `prompt`"),
    ({"model": "t0", "prompt": [1], "max_tokens": -3}, 400, "max_tokens=-3"),
    ({"model": "t0", "prompt": [1] * 30, "max_tokens": 10}, 400, "maximum context length is 32"),
    ({"model": "t0", "prompt": "text", "max_tokens": 2}, 400, "no tokenizer"),
    ({"model": "t0", "prompt": [1, 999], "max_tokens": 2}, 400, "outside the vocabulary"),
    ({"model": "t0", "prompt": [1], "temperature": "hot"}, 400, "`temperature` must be"),
    (b'{"model": "t0", "prompt": [1', 400, "not valid JSON"),
])
def test_bad_requests_say_why(llama, body, status, says):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(llama["url"] + "/v1/completions", timeout=30, **kw)
    assert r.status_code == status and says in r.json()["error"]["message"], r.text


def test_other_endpoints_refuse_what_this_model_cannot_do(llama):
    url = llama["url"]
    r = httpx.post(url + "/v1/chat/completions", json={"model": "t0", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]
    r = httpx.post(url + "/v1/classify", json={"model": "t0", "input": [1, 2]})
    assert r.status_code == 400 and "decoder" in r.json()["error"]["message"]


def test_a_full_queue_answers_429_and_serves_the_rest(llama):
    url = llama["url"]

    async def go():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as c:
            return await asyncio.gather(*[c.post(url + "/v1/completions", json={
                "model": ["t0", "t1"][i % 2], "prompt": PROMPTS[i % 4], "max_tokens": 24, **GREEDY})
                for i in range(40)])

    codes = [r.status_code for r in asyncio.run(go())]
    assert set(codes) == {200, 429} and codes.count(200) >= 8, codes  # at least the 8 that fit the queue


def test_disconnect_mid_stream_frees_the_row(llama):
    url = llama["url"]
    before = metrics(url).get("adapters_jax_requests_cancelled_total", 0)
    with httpx.stream("POST", url + "/v1/completions", timeout=60,
                      json={"model": "t0", "prompt": PROMPTS[1], "max_tokens": 28, "stream": True, **GREEDY}) as r:
        next(r.iter_lines())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        m = metrics(url)
        if m["adapters_jax_running_requests"] == 0 and m["adapters_jax_queue_depth"] == 0:
            break
        time.sleep(0.1)
    m = metrics(url)
    assert m["adapters_jax_running_requests"] == 0
    # either it was cut short (cancelled) or it had already finished: both free the row; usually the former
    assert m.get("adapters_jax_requests_cancelled_total", 0) >= before
    for key in ("queue_depth", "batch_fill", "tokens_per_second", "adapter_hits_total", "adapter_misses_total",
                "ttft_seconds_count", "compiled_programs"):
        assert "adapters_jax_" + key in m, key


def test_sigterm_drains_in_flight_requests_then_exits(llama):
    url, proc = llama["url"], llama["proc"]

    async def go():
        async with httpx.AsyncClient(timeout=60) as c:
            async def one(i):
                async with c.stream("POST", url + "/v1/completions", json={
                        "model": "t2", "prompt": PROMPTS[i % 4], "max_tokens": 24, "stream": True, **GREEDY}) as r:
                    lines = []
                    async for line in r.aiter_lines():
                        if line.startswith("data: "):
                            lines.append(line)
                            if len(lines) == 1 and i == 0:
                                proc.send_signal(signal.SIGTERM)
                    return lines
            return await asyncio.gather(*[one(i) for i in range(6)])

    for lines in asyncio.run(go()):
        assert lines[-1] == "data: [DONE]" and len(lines) == 26  # 24 tokens, the finish chunk, [DONE]
    assert proc.wait(timeout=30) == 0


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_a_prefix_or_prompt_adapter_of_another_length_is_refused(method):
    """Every slot runs the bank's (static) prefix and prompt lengths, so a shorter one cannot be served exactly."""
    from adapters_jax import configs
    from adapters_jax.serve import residency

    spec = lambda n: configs.parse(f"{method}_tuning[{method}_length={n}]")  # noqa: E731
    template = residency.Template("bank", spec(5), 64, {}, {}, 8)
    residency.check_fits(configs.NamedAdapter("p5", "", spec(5)), template)
    with pytest.raises(configs.AdapterConfigError, match=rf"{method} length \[3\].*\[5\].*{method} adapters of one"):
        residency.check_fits(configs.NamedAdapter("p3", "", spec(3)), template)
