"""The HTTP layer: an ASGI app (FastAPI) over an `Engine`, with the API clients already speak.

    POST /v1/completions, /v1/chat/completions   OpenAI's shapes; `model` picks the adapter (vLLM), the base by
                                                 its own name; `stream: true` sends server-sent events
    POST /v1/classify (/classify)                vLLM's classify shape: labels and probabilities per input
    GET  /v1/models                              the base and every registered adapter
    POST /v1/load_adapter, /v1/unload_adapter    vLLM's bodies {"lora_name", "lora_path"} (also under vLLM's
                                                 /v1/load_lora_adapter, /v1/unload_lora_adapter)
    GET  /metrics, /health                       Prometheus text; 200 while serving

Errors are OpenAI's `{"error": {"message", "type", "code"}}`: 400 for a request that
cannot be served as written (the message says which field and why), 404 for an
unknown model, 429 when the queue is full.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from adapters_jax.errors import AdaptersJaxError
from adapters_jax.serve.request import QueueFull, Request, Sampling, UnknownAdapter

TYPES = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError", 500: "InternalServerError"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": TYPES.get(status, "Error"), "param": None,
                                   "code": status}}, status_code=status)


def make_app(engine) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        yield
        await asyncio.to_thread(engine.stop, True)  # uvicorn has let in-flight requests finish by now

    app = FastAPI(title="adapters_jax server", lifespan=lifespan)
    tok = engine.tokenizer

    @app.exception_handler(BadRequest)
    async def _bad(_, e: BadRequest):
        return error(e.status, str(e))

    @app.exception_handler(UnknownAdapter)
    async def _unknown(_, e: UnknownAdapter):
        return error(404, e.args[0])

    @app.exception_handler(QueueFull)
    async def _full(_, e: QueueFull):
        return error(429, str(e))

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(engine.metrics.render(engine.gauges()), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        card = lambda i, root, parent: {"id": i, "object": "model", "created": now, "owned_by": "adapters_jax",
                                        "root": root, "parent": parent}
        data = [card(engine.name, engine.name, None)]
        data += [card(n, str(p), engine.name) for n, p in sorted(engine.registry.items())]
        return {"object": "list", "data": data}

    @app.post("/v1/load_adapter")
    @app.post("/v1/load_lora_adapter")
    async def load_adapter(request: HTTPRequest):
        body = await _body(request)
        name, path = _field(body, "lora_name", str), _field(body, "lora_path", str)
        try:
            await asyncio.to_thread(engine.load_adapter, name, path)
        except AdaptersJaxError as e:
            raise BadRequest(f"adapter {name!r} not loaded: {e}") from None
        return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")

    @app.post("/v1/unload_adapter")
    @app.post("/v1/unload_lora_adapter")
    async def unload_adapter(request: HTTPRequest):
        body = await _body(request)
        name = _field(body, "lora_name", str)
        engine.unload_adapter(name)
        return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        body = await _body(request)
        prompt = _field(body, "prompt", (str, list))
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]  # a batch of one
        ids = _tokens(prompt, "prompt")
        return await _generate(request, body, ids, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest):
        body = await _body(request)
        messages = _field(body, "messages", list)
        if tok is None or not getattr(tok, "chat_template", None):
            raise BadRequest(f"model {engine.name!r} has no chat template; use /v1/completions")
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise BadRequest("`messages` must be a non-empty list of {\"role\", \"content\"} objects")
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return await _generate(request, body, tok(text, add_special_tokens=False)["input_ids"], chat=True)

    @app.post("/v1/classify")
    @app.post("/classify")
    async def classify(request: HTTPRequest):
        body = await _body(request)
        if engine.decoder:
            raise BadRequest(f"model {engine.name!r} is a decoder; classify needs an encoder server")
        inputs = _field(body, "input", (str, list))
        if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        if not inputs:
            raise BadRequest("`input` is empty")
        rows = [_tokens(x, f"input[{i}]", special=True) for i, x in enumerate(inputs)]
        adapter = _adapter(body)
        if adapter is None:
            raise BadRequest(f"the base model {engine.name!r} has no classification head; choose an adapter")
        payload = await _wait(request, engine.submit(_request("classify", adapter, rows, None)))
        data = [{"index": i, **d} for i, d in enumerate(payload["data"])]
        n = payload["prompt_tokens"]
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                "model": body["model"], "data": data,
                "usage": {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0}}

    # --- helpers ---

    def _adapter(body) -> str | None:
        model = _field(body, "model", str)
        if model == engine.name:
            return None
        if model not in engine.registry:
            raise UnknownAdapter(f"The model `{model}` does not exist.")
        return model

    def _tokens(x, what: str, special: bool = False) -> list:
        if isinstance(x, str):
            if tok is None:
                raise BadRequest(f"{what} is text but model {engine.name!r} has no tokenizer; send token ids")
            x = tok(x, add_special_tokens=special)["input_ids"]
        elif not (isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)):
            raise BadRequest(f"{what} must be a string or a list of token ids")
        if not x:
            raise BadRequest(f"{what} is empty")
        vocab = engine.base.config.vocab_size
        bad = [t for t in x if not 0 <= t < vocab]
        if bad:
            raise BadRequest(f"{what} holds token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}")
        if len(x) > engine.max_model_len:
            raise BadRequest(f"{what} has {len(x)} tokens; this model's maximum context length is "
                             f"{engine.max_model_len} tokens")
        return x

    def _sampling(body, n_prompt: int) -> Sampling:
        max_tokens = _field(body, "max_completion_tokens", int, None)
        max_tokens = _field(body, "max_tokens", int, 16 if max_tokens is None else max_tokens)
        if max_tokens < 1:
            raise BadRequest(f"max_tokens={max_tokens} must be at least 1")
        if n_prompt + max_tokens > engine.max_model_len:
            raise BadRequest(f"This model's maximum context length is {engine.max_model_len} tokens. However, you "
                             f"requested {n_prompt + max_tokens} tokens ({n_prompt} in the prompt, {max_tokens} in "
                             "the completion). Please reduce the length of the prompt or the completion.")
        temperature = float(_field(body, "temperature", (int, float), 1.0))
        top_p = float(_field(body, "top_p", (int, float), 1.0))
        top_k = _field(body, "top_k", int, 0)
        if not 0 <= temperature <= 2 or not 0 < top_p <= 1 or top_k < -1:
            raise BadRequest(f"temperature={temperature} must be in [0, 2], top_p={top_p} in (0, 1], top_k={top_k} "
                             ">= -1 (-1 or 0: off)")
        stop = _field(body, "stop", (str, list), [])
        stop = [stop] if isinstance(stop, str) else stop
        if not all(isinstance(s, str) and s for s in stop):
            raise BadRequest("`stop` must be a string or a list of non-empty strings")
        if stop and tok is None:
            raise BadRequest(f"stop strings need a tokenizer; model {engine.name!r} has none")
        if _field(body, "n", int, 1) != 1 or _field(body, "best_of", int, 1) != 1:
            raise BadRequest("only n=1 (and best_of=1) is supported")
        for f in ("logprobs", "top_logprobs", "suffix"):
            if body.get(f) not in (None, False, 0):
                raise BadRequest(f"`{f}` is not supported")
        if body.get("echo"):
            raise BadRequest("`echo` is not supported")
        seed = _field(body, "seed", int, None)
        return Sampling(max_tokens, temperature, top_p, max(top_k, 0), None if seed is None else seed % 2 ** 31,
                        tuple(stop), bool(_field(body, "ignore_eos", bool, False)))

    def _request(kind, adapter, prompt, sampling):
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        req = Request(kind, adapter, prompt, sampling,
                      on_event=lambda k, p: loop.call_soon_threadsafe(q.put_nowait, (k, p)))
        req.queue = q
        return req

    async def _wait(request, req):
        while True:
            kind, payload = await req.queue.get()
            if kind == "error":
                raise BadRequest(payload["message"], payload.get("status", 500))
            if kind in ("done", "result"):
                return payload

    async def _generate(request, body, ids, chat: bool):
        adapter = _adapter(body)
        sampling = _sampling(body, len(ids))
        stream = bool(_field(body, "stream", bool, False))
        req = engine.submit(_request("generate", adapter, ids, sampling))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created, model = int(time.time()), body["model"]
        if not stream:
            try:
                done = await _wait(request, req)
            except asyncio.CancelledError:
                engine.cancel(req)
                raise
            usage = _usage(done)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": done["text"]},
                          "finish_reason": done["finish_reason"]}
            else:
                choice = {"index": 0, "text": done["text"], "logprobs": None, "finish_reason": done["finish_reason"],
                          "token_ids": done["token_ids"]}
            return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                    "model": model, "choices": [choice], "usage": usage}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text, finish, token_ids=None, first=False):
            if chat:
                delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
                c = {"index": 0, "delta": delta, "finish_reason": finish}
            else:
                c = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                if token_ids is not None:
                    c["token_ids"] = token_ids
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                          "choices": [c]}) + "\n\n"

        async def events():
            try:
                first = True
                while True:
                    kind, p = await req.queue.get()
                    if kind == "token":
                        yield chunk(p["text"], None, [p["token_id"]] if p["token_id"] is not None else None, first)
                        first = False
                    elif kind == "done":
                        yield chunk("", p["finish_reason"], first=first)
                        if include_usage:
                            yield "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model,
                                                         "choices": [], "usage": _usage(p)}) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    else:
                        yield "data: " + json.dumps({"error": {"message": p["message"], "code": p["status"]}}) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
            finally:
                engine.cancel(req)  # a no-op once finished; frees the row when the client went away mid-stream

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def _usage(done) -> dict:
    n_prompt, n_out = done["prompt_tokens"], len(done["token_ids"])
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}


async def _body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise BadRequest(f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


_MISSING = object()


def _field(body: dict, name: str, kind, default=_MISSING):
    if name not in body or body[name] is None:
        if default is _MISSING:
            raise BadRequest(f"missing required field `{name}`")
        return default
    v = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds:
        raise BadRequest(f"`{name}` must be {' or '.join(k.__name__ for k in kinds)}, not a boolean")
    if not isinstance(v, kinds):
        raise BadRequest(f"`{name}` must be {' or '.join(k.__name__ for k in kinds)}, not {type(v).__name__}")
    return v
