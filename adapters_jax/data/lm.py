"""Causal-LM data: next-token text (task kind "lm") and prompt/response pairs (task kind "instruct").

    enc = lm.encode_lm(task["train"]["text"], tokenizer, max_length=128)          # every token a target
    prompts, responses = lm.instruct_pairs(task, "train", "Review: {text}\\nSentiment:", " {label}",
                                           response_names=["negative", "positive"])
    enc = lm.encode_instruct(prompts, responses, tokenizer, max_length=128)       # targets: the response only

An encoded split holds token ids and a loss mask per sequence (1 where the
token is a target of the next-token loss), ready for `Batches(..., loss_masks=)`.
"lm": each text plus an end-of-sequence token, cut into blocks of max_length
tokens (a last block of one token is dropped: it has no target).
"instruct": prompt tokens (or the tokenizer's chat template around the prompt)
then response tokens and end-of-sequence; the loss covers the response and
its end token only. A prompt too long for max_length loses tokens from its
start (the response is never cut; one that does not fit is refused).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from adapters_jax.errors import DataError


@dataclasses.dataclass
class LMEncoded:
    ids: list[np.ndarray]
    loss_masks: list[np.ndarray]
    prompts: list[np.ndarray] | None = None  # instruct: the prompt tokens (what generation starts from)
    responses: list[str] | None = None  # instruct: the reference responses (exact-match accuracy)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labels(self) -> np.ndarray:  # Batches wants one int per sequence; LM tasks carry none
        return np.zeros(len(self.ids), np.int32)

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray([len(x) for x in self.ids], np.int32)

    @property
    def target_tokens(self) -> int:
        """Tokens the loss counts: a target is a token with loss mask 1 that has a token before it."""
        return int(sum(int(m[1:].sum()) for m in self.loss_masks))


def _eos(tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError(f"{type(tokenizer).__name__} has no end-of-sequence token; causal LM tasks need one")
    return int(eos)


def _tokens(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_lm(texts: Sequence[str], tokenizer: Any, max_length: int) -> LMEncoded:
    if max_length < 2:
        raise DataError(f"max_length={max_length}: a causal LM example needs at least 2 tokens")
    eos = _eos(tokenizer)
    ids = []
    for text in texts:
        toks = _tokens(tokenizer, text) + [eos]
        ids += [np.asarray(toks[i:i + max_length], np.int32) for i in range(0, len(toks), max_length)
                if len(toks) - i >= 2]
    if not ids:
        raise DataError("no text to train on (every text was empty)")
    return LMEncoded(ids, [np.ones(len(x), np.int32) for x in ids])


def encode_instruct(prompts: Sequence[str], responses: Sequence[str], tokenizer: Any, max_length: int, *,
                    chat_template: bool = False) -> LMEncoded:
    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
    if chat_template and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"chat_template=True but {type(tokenizer).__name__} has no chat template; "
                        "use a prompt template instead")
    eos = _eos(tokenizer)
    ids, masks, heads = [], [], []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        if not str(r).strip():
            raise DataError(f"row {i}: empty response; every instruct example needs one")
        if chat_template:
            text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                 add_generation_prompt=True)
            p_ids = _tokens(tokenizer, text)
        else:
            p_ids = _tokens(tokenizer, p)
        r_ids = _tokens(tokenizer, r) + [eos]
        if len(r_ids) >= max_length:
            raise DataError(f"row {i}: the response has {len(r_ids)} tokens with its end token, no room for a "
                            f"prompt in max_length={max_length}")
        p_ids = p_ids[len(p_ids) - (max_length - len(r_ids)):] if len(p_ids) + len(r_ids) > max_length else p_ids
        if not p_ids:
            raise DataError(f"row {i}: empty prompt")
        ids.append(np.asarray(p_ids + r_ids, np.int32))
        masks.append(np.asarray([0] * len(p_ids) + [1] * len(r_ids), np.int32))
        heads.append(np.asarray(p_ids, np.int32))
    return LMEncoded(ids, masks, heads, [str(r) for r in responses])


def instruct_pairs(task, split: str, prompt_template: str, response_template: str,
                   response_names: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """A classification task's split as (prompts, responses): `{text}` and `{label}` filled in."""
    names = list(response_names) if response_names else list(task.label_names)
    if len(names) != task.num_labels:
        raise DataError(f"{len(names)} response names {names} for {task.num_labels} labels {list(task.label_names)}")
    for what, tpl, key in (("prompt", prompt_template, "{text}"), ("response", response_template, "{label}")):
        if key not in tpl:
            raise DataError(f"the {what} template {tpl!r} does not contain {key}")
    d = task[split]
    prompts = [prompt_template.replace("{text}", t) for t in d["text"]]
    responses = [response_template.replace("{label}", names[int(y)]) for y in d["label"]]
    return prompts, responses
