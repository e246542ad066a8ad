"""Multi-tenant serving: one frozen base, many adapters through one bank, an OpenAI-compatible HTTP API.

    engine.py     the engine (adapter residency, continuous batching, classification), no HTTP
    http.py       the FastAPI app over an engine (scripts/serve.py runs it with uvicorn)
    docs/serving.md says what it does and what it measured.
"""
