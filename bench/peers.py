"""One PyTorch peer configuration (or the torch matmul probe) in its own process; prints one result line.

Run with the peers' interpreter (.venv-peers: torch, transformers 4.57, AdapterHub
`adapters` 1.3, PEFT 0.21), never the library's:

    .venv-peers/bin/python bench/peers.py '{"model": "minilm-l6", "method": "houlsby", "batch": 32, "seq": 128,
                                            "model_config": {...}, "model_dir": "..."}'

The model is built from the same config as ours (for MiniLM from the same
checkpoint directory); pytorch = transformers alone (full fine-tuning),
adapterhub = `adapters` bottleneck configs, peft = PEFT LoRA/IA3. Given our
run's count (`jax_trainable_params`), a peer that would train a different
number of parameters refuses to run and reports both counts.
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import BOTTLENECK, MODELS, PEERS, emit  # noqa: E402


def matmul_peak(dtype: str, reps: int = 12) -> dict:
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    out = {}
    for m, k, n in ((4096, 384, 1536), (2048, 2048, 2048)):
        a, b = torch.ones(m, k, dtype=dt), torch.ones(k, n, dtype=dt)
        a @ b
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        out[f"{m}x{k}x{n}"] = 2.0 * m * k * n / best
    return out


def build(cfg):
    import transformers

    mc, task = cfg["model_config"], MODELS[cfg["model"]]
    torch.manual_seed(0)
    if task == "classification":
        if cfg.get("model_dir"):
            model = transformers.AutoModelForSequenceClassification.from_pretrained(cfg["model_dir"], num_labels=2)
        else:  # same shape, random weights: speed does not depend on the values
            keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                    "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings",
                    "type_vocab_size", "layer_norm_eps", "pad_token_id")
            model = transformers.BertForSequenceClassification(
                transformers.BertConfig(num_labels=2, **{k: mc[k] for k in keys}))
    else:
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                "tie_word_embeddings", "attention_bias", "mlp_bias", "attention_dropout")
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{k: mc[k] for k in keys}))
    method, impl = cfg["method"], PEERS[cfg["method"]]
    is_llama = task == "lm"
    if impl == "adapterhub":
        import adapters

        hidden = mc["hidden_size"]
        klass = adapters.DoubleSeqBnConfig if method == "houlsby" else adapters.SeqBnConfig
        adapters.init(model)
        model.add_adapter("bench", config=klass(reduction_factor=hidden / BOTTLENECK, non_linearity="relu"))
        model.train_adapter("bench")
    elif impl == "peft":
        import peft

        task_type = "CAUSAL_LM" if is_llama else "SEQ_CLS"
        if method == "lora":
            pc = peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, task_type=task_type,
                                 target_modules=["q_proj", "v_proj"] if is_llama else ["query", "value"])
        elif is_llama:
            pc = peft.IA3Config(task_type=task_type, feedforward_modules=["down_proj"],
                                target_modules=["k_proj", "v_proj", "down_proj"])
        else:  # the FFN's output dense only (a plain "output.dense" also matches attention.output.dense)
            ff = r".*\.layer\.\d+\.output\.dense"
            pc = peft.IA3Config(task_type=task_type, feedforward_modules=ff,
                                target_modules=r".*\.attention\.self\.(key|value)|" + ff)
        model = peft.get_peft_model(model, pc)
    return model, task, impl


def nbytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def run(cfg) -> dict:
    torch.set_num_threads(cfg.get("threads") or os.cpu_count())
    t_load = time.perf_counter()
    model, task, impl = build(cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    if cfg.get("jax_trainable_params") is not None and trainable != cfg["jax_trainable_params"]:
        return {"impl": impl, "trainable_params": trainable, "jax_trainable_params": cfg["jax_trainable_params"],
                "error": f"{impl} {cfg['method']} trains {trainable:,} params, ours {cfg['jax_trainable_params']:,}: "
                         f"not the same work, not run"}
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    b, t = cfg["batch"], cfg["seq"]
    ids = torch.randint(1000, cfg["model_config"]["vocab_size"] - 1, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    labels = torch.randint(0, 2, (b,), generator=g) if task == "classification" else ids
    load_s = time.perf_counter() - t_load

    grad_bytes = []

    def step():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        if not grad_bytes:  # the gradients this backward produced, once
            grad_bytes.append(nbytes(p.grad for p in model.parameters() if p.grad is not None))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    times = []
    for _ in range(cfg["warmup"] + cfg["steps"]):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    measured = times[cfg["warmup"]:]
    med = statistics.median(measured)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:  # one extra step, counted, not timed
        step()
    flops = float(fc.get_total_flops())
    opt_tensors = [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "impl": impl, "trainable_params": trainable, "jax_trainable_params": cfg.get("jax_trainable_params"),
        "total_params": sum(p.numel() for p in model.parameters()),
        "param_bytes": nbytes(model.parameters()), "trainable_bytes": nbytes(params), "grad_bytes": grad_bytes[0],
        "grad_bytes_source": "sum of p.grad bytes over the model's params after the first backward",
        "opt_state_bytes": nbytes(opt_tensors),
        "step_s_median": med, "step_s_min": min(measured), "step_s_max": max(measured), "step_s_all": measured,
        "first_step_s": times[0], "compile_s": None, "load_s": load_s,
        "tokens_per_s": b * t / med, "loss_after": float(loss),
        "model_flops": flops, "flops_source": "torch FlopCounterMode over one train step (matmuls, attention)",
        "achieved_flops_per_s": flops / med,
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main():
    cfg = json.loads(sys.argv[1])
    torch.set_num_threads(cfg.get("threads") or os.cpu_count())
    if cfg.get("probe") == "matmul":
        emit({"impl": "pytorch", "probe": "matmul", "flops_per_s": matmul_peak(cfg.get("dtype", "float32"))})
        return
    rec = {"method": cfg["method"], "model": cfg["model"], "batch": cfg["batch"], "seq": cfg["seq"],
           "dtype": cfg.get("dtype", "float32")}
    rec.update(run(cfg))
    emit(rec)
    if "error" in rec:
        sys.exit(1)


if __name__ == "__main__":
    main()
