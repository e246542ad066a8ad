"""Reference outputs for the encoder parity tests (run once; torch is used only here).

    .venv-ref/bin/python scripts/make_fixtures_bert.py --minilm DIR

DIR is the minilm-l6 asset directory (`python scripts/assets.py fetch minilm-l6`
prints it). Writes tests/fixtures/minilm_hidden.npz, tests/fixtures/tiny-roberta/,
tests/fixtures/tiny-bert-bf16/ (config, safetensors, reference.npz).
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SENTENCES = [
    "The movie was a delight from start to finish.",
    "A tedious, overlong mess.",
    "Adapters train a few parameters of a frozen transformer and keep the rest of the model as it was.",
    "Hello world",
]


def tiny_batch(vocab, pad, seed=0):
    g = np.random.default_rng(seed)
    ids = g.integers(pad + 3, vocab, size=(3, 12)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad
    return ids, mask


def save_tiny(model, out: Path, ids, mask, dtype=None):
    out.mkdir(parents=True, exist_ok=True)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(out, safe_serialization=True)
    model = model.float().eval()  # reference computed in float32 from the stored weights
    with torch.no_grad():
        h = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    np.savez(out / "reference.npz", input_ids=ids, attention_mask=mask, hidden=h.numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)

    tok = AutoTokenizer.from_pretrained(args.minilm)
    tok._tokenizer.no_padding()
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    model = BertModel.from_pretrained(args.minilm, add_pooling_layer=True).eval()
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc["input_ids"]), attention_mask=torch.tensor(enc["attention_mask"]))
    np.savez_compressed(
        FIX / "minilm_hidden.npz", input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
        hidden=out.last_hidden_state.numpy(), pooled=out.pooler_output.numpy(),
    )

    small = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    rcfg = RobertaConfig(**small, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    save_tiny(RobertaModel(rcfg), FIX / "tiny-roberta", *tiny_batch(128, 1))
    save_tiny(BertModel(BertConfig(**small)), FIX / "tiny-bert-bf16", *tiny_batch(128, 0), dtype=torch.bfloat16)


if __name__ == "__main__":
    main()
