"""The PyTorch peer of scripts/serve.py: transformers + PEFT 0.21 mixed-adapter batches behind the same HTTP API.

    .venv-peers/bin/python bench/serve_peft.py --model DIR --tenants 32 --port 8751 [--max-batch 16] [--classify]

Run with the peers' interpreter (.venv-peers: torch 2.13 CPU, transformers 4.57, PEFT 0.21, plus fastapi and
uvicorn for this script), never the library's. DIR is a Hugging Face directory: SmolLM2-135M exported by
aj.export_merged (float32, bench/results/README.md has the command) for completions, the MiniLM-L6 asset
directory for --classify. --tenants LoRA adapters t0..t{N-1} (r=8, alpha=8 on q/v projections: our
`lora[r=8]`; random B; --classify: each with its own 2-label classifier, PEFT's modules_to_save) are added
with PEFT, and requests pick one by `model` as on our server (the base by --served-model-name).

What a PyTorch user gets without a serving engine: one worker thread takes every waiting request (up to
--max-batch), runs them as one batch with PEFT's `adapter_names` (each row its own adapter) and answers them;
requests that arrive meanwhile wait for the next batch. Completions: `generate` (greedy, left-padded prompts,
exactly max_tokens new tokens as `ignore_eos` asks: min_new_tokens), streamed as server-sent events, one
chunk per token with `token_ids`, as ours; classify: one forward pass, softmax over the adapter's labels.
The same load generator (bench/serve_load.py) drives both servers.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import queue
import threading
import time
import uuid
from pathlib import Path

import torch
from fastapi import FastAPI, Request  # at module level: FastAPI reads the handlers' annotations by name
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse


def build(model_dir: str, tenants: int, classify: bool):
    import peft
    import transformers

    torch.manual_seed(0)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    except ValueError:  # a transformers 5 export names its tokenizer class TokenizersBackend: read tokenizer.json
        cfg = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"),
                                                   **{k: cfg[k] for k in ("bos_token", "eos_token", "pad_token",
                                                                          "unk_token") if k in cfg})
    if classify:
        base = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
        targets, extra = ["query", "value"], {"modules_to_save": ["classifier"]}
    else:
        base = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
        targets, extra = ["q_proj", "v_proj"], {}
        tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    cfg = peft.LoraConfig(r=8, lora_alpha=8, target_modules=targets, lora_dropout=0.0, **extra)
    model = peft.get_peft_model(base, cfg, adapter_name="t0")
    for i in range(1, tenants):
        model.add_adapter(f"t{i}", cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or ("modules_to_save" in name and "classifier" in name):
                p.normal_(0, 0.02)
    model.eval()
    return model, tok


class Streamer:
    """transformers' streamer protocol for a batch: put() gets the prompt first, then one token per row per step."""

    def __init__(self, jobs):
        self.jobs, self.seen_prompt, self.step = jobs, False, 0

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.step += 1
        for job, token in zip(self.jobs, value.reshape(-1).tolist()):
            if self.step <= job["max_tokens"]:
                job["emit"]("token", token)

    def end(self):
        for job in self.jobs:
            job["emit"]("done", None)


def worker(model, tok, jobs: queue.Queue, max_batch: int, classify: bool, base_name: str):
    while True:
        batch = [jobs.get()]
        deadline = time.monotonic() + 0.005  # gather what arrives together (closed-loop clients send at once)
        while len(batch) < max_batch:
            try:
                batch.append(jobs.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        names = ["__base__" if j["model"] == base_name else j["model"] for j in batch]
        try:
            with torch.inference_mode():
                if classify:
                    enc = tok([j["text"] for j in batch], return_tensors="pt", padding=True, truncation=True)
                    probs = torch.softmax(model(**enc, adapter_names=names).logits.float(), -1)
                    for j, p in zip(batch, probs.tolist()):
                        j["emit"]("result", {"label": f"LABEL_{int(max(range(len(p)), key=p.__getitem__))}",
                                             "probs": p, "num_classes": len(p)})
                else:
                    enc = tok([j["text"] for j in batch], return_tensors="pt", padding=True, add_special_tokens=False,
                              return_token_type_ids=False)
                    n = max(j["max_tokens"] for j in batch)
                    model.generate(**enc, adapter_names=names, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                   pad_token_id=tok.pad_token_id, streamer=Streamer(batch))
        except Exception as e:  # answer the batch with the error, keep serving
            for j in batch:
                j["emit"]("error", f"{type(e).__name__}: {e}")


def make_app(jobs: queue.Queue, tenants: int, base_name: str, decode):
    app = FastAPI()
    known = {base_name} | {f"t{i}" for i in range(tenants)}

    def submit(body, text, max_tokens=0):
        if body.get("model") not in known:
            return None, JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist",
                                                 "code": 404}}, status_code=404)
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        jobs.put({"model": body["model"], "text": text, "max_tokens": max_tokens,
                  "emit": lambda kind, x: loop.call_soon_threadsafe(q.put_nowait, (kind, x))})
        return q, None

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse("")

    @app.post("/v1/classify")
    async def classify_(request: Request):
        body = json.loads(await request.body())
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        queues = []
        for text in inputs:
            q, err = submit(body, text)
            if err is not None:
                return err
            queues.append(q)
        data = []
        for i, q in enumerate(queues):
            kind, x = await q.get()
            if kind == "error":
                return JSONResponse({"error": {"message": x, "code": 500}}, status_code=500)
            data.append({"index": i, **x})
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "model": body["model"], "data": data}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = json.loads(await request.body())
        q, err = submit(body, body["prompt"], int(body.get("max_tokens", 16)))
        if err is not None:
            return err
        rid, model = f"cmpl-{uuid.uuid4().hex}", body["model"]

        def chunk(ids, finish):
            return "data: " + json.dumps({"id": rid, "object": "text_completion", "model": model, "choices": [
                {"index": 0, "text": decode(ids), "token_ids": ids, "finish_reason": finish}]}) + "\n\n"

        async def events():
            while True:
                kind, x = await q.get()
                if kind == "token":
                    yield chunk([x], None)
                elif kind == "done":
                    yield chunk([], "length")
                    yield "data: [DONE]\n\n"
                    return
                else:
                    yield "data: " + json.dumps({"error": {"message": x, "code": 500}}) + "\n\n"
                    yield "data: [DONE]\n\n"
                    return

        if body.get("stream"):
            return StreamingResponse(events(), media_type="text/event-stream")
        ids = []
        async for line in events():
            if line.startswith("data: {"):
                ids += json.loads(line[6:])["choices"][0]["token_ids"] if "choices" in line else []
        return {"id": rid, "object": "text_completion", "model": model,
                "choices": [{"index": 0, "text": decode(ids), "token_ids": ids, "finish_reason": "length"}]}

    return app


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a Hugging Face directory")
    ap.add_argument("--tenants", type=int, default=32)
    ap.add_argument("--classify", action="store_true")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--port", type=int, default=8751)
    ap.add_argument("--served-model-name", default="base")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import uvicorn

    t0 = time.perf_counter()
    model, tok = build(args.model, args.tenants, args.classify)
    jobs: queue.Queue = queue.Queue()
    threading.Thread(target=worker, args=(model, tok, jobs, args.max_batch, args.classify, args.served_model_name),
                     daemon=True).start()
    app = make_app(jobs, args.tenants, args.served_model_name, tok.decode)
    print(f"peer serving {args.model} + {args.tenants} PEFT adapters on 127.0.0.1:{args.port} "
          f"(ready {time.perf_counter() - t0:.1f} s after start)", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
