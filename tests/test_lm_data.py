"""Causal-LM data (data/lm.py): next-token blocks, prompt/response loss masks, templates, bad input."""
import numpy as np
import pytest

from adapters_jax.data import lm
from adapters_jax.data.batching import Batches
from adapters_jax.errors import DataError


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer):
    return smollm2_tokenizer


def test_lm_blocks_cover_every_token_once(tok):
    texts = ["The old lighthouse keeper climbed the stairs.", "Ships relied on its beam.", ""]
    enc = lm.encode_lm(texts, tok, max_length=4)
    want = []
    for x in texts:  # blocks of 4 per text; a trailing 1-token block (no target) is dropped
        toks = tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        want += toks[:len(toks) - 1] if len(toks) % 4 == 1 else toks
    assert [int(t) for x in enc.ids for t in x] == want
    assert all(2 <= len(x) <= 4 for x in enc.ids) and all((m == 1).all() for m in enc.loss_masks)
    assert enc.target_tokens == sum(len(x) - 1 for x in enc.ids)


def test_instruct_loss_covers_the_response_and_its_end_token_only(tok):
    enc = lm.encode_instruct(["Review: a fine film\nSentiment:"], [" positive"], tok, max_length=64)
    ids, mask = enc.ids[0], enc.loss_masks[0]
    assert tok.decode(ids[mask == 1]) == " positive" + tok.eos_token
    assert tok.decode(ids[mask == 0]) == "Review: a fine film\nSentiment:"
    assert list(enc.prompts[0]) == list(ids[mask == 0]) and enc.responses == [" positive"]


def test_long_prompts_lose_their_start_never_the_response(tok):
    enc = lm.encode_instruct(["word " * 100], [" yes"], tok, max_length=16)
    ids, mask = enc.ids[0], enc.loss_masks[0]
    assert len(ids) == 16 and tok.decode(ids[mask == 1]) == " yes" + tok.eos_token


def test_instruct_pairs_from_a_classification_task(real_task):
    t = real_task("rt_polarity")
    p, r = lm.instruct_pairs(t, "test", "Review: {text}\nSentiment:", " {label}", ["negative", "positive"])
    assert len(p) == len(r) == 1236 and p[0].startswith("Review: ") and set(r) == {" negative", " positive"}
    assert sum(x == " positive" for x in r) == int(np.sum(t["test"]["label"]))


def test_batches_carry_the_loss_mask(tok):
    enc = lm.encode_instruct(["a b c", "d"], [" x", " y z"], tok, max_length=32)
    batch = next(iter(Batches(enc.ids, enc.labels, 2, buckets=(16,), loss_masks=enc.loss_masks, shuffle=False)))
    for row, i in enumerate(batch["index"]):
        n = len(enc.ids[i])
        assert (batch["loss_mask"][row, :n] == enc.loss_masks[i]).all() and not batch["loss_mask"][row, n:].any()


def test_bad_input(tok, real_task):
    with pytest.raises(DataError, match="row 1: empty response"):
        lm.encode_instruct(["a", "b"], [" x", "  "], tok, 16)
    with pytest.raises(DataError, match="row 0: the response has .* no room for a prompt in max_length=4"):
        lm.encode_instruct(["a"], [" one two three four"], tok, 4)
    with pytest.raises(DataError, match=r"response template ' \{lab\}' does not contain \{label\}"):
        lm.instruct_pairs(real_task("rt_polarity"), "test", "{text}", " {lab}")
    with pytest.raises(DataError, match="3 response names"):
        lm.instruct_pairs(real_task("rt_polarity"), "test", "{text}", " {label}", ["a", "b", "c"])

    class NoEos:
        eos_token_id = None
    with pytest.raises(DataError, match="NoEos has no end-of-sequence token"):
        lm.encode_lm(["x"], NoEos(), 8)
    with pytest.raises(DataError, match="loss_masks must give one mask per sequence"):
        Batches([np.ones(3)], [0], 1, buckets=(4,), loss_masks=[np.ones(2)])
