"""Batches for the trainer: few fixed shapes, deterministic order, resumable, per-host slices.

    enc = tokenize.encode_task(task, tokenizer, 128)["train"]
    batches = Batches(enc.ids, enc.labels, batch_size=64, padding="buckets", buckets=(32, 64, 128),
                      seed=0, shuffle=True, drop_last=True,
                      process_index=jax.process_index(), process_count=jax.process_count())
    for batch in batches:              # endless over epochs; repeat=False: the rest of one epoch
        ...
        ckpt["data"] = batches.state() # {"seed": 0, "epoch": 1, "step": 17}: JSON, a few ints
    batches.restore(ckpt["data"])      # then yields exactly the batches that were still to come

Each batch is a dict of numpy arrays, b = batch_size // process_count rows:
    input_ids       [b, T] int32   pad_id beyond each row's length
    attention_mask  [b, T] int32   1 on real tokens
    labels          [b]    int32
    example_mask    [b]    bool    False on padding rows (the final partial batch when drop_last=False)
    index           [b]    int32   row of the example in `token_ids`, -1 on padding rows
    loss_mask       [b, T] int32   with `loss_masks` (causal LM tasks): 1 where the token is a target, 0 on padding

`batch_size` is global: the epoch's order (a permutation from (seed, epoch)) is
cut into global batches, and process i of n yields rows [i*b, (i+1)*b) of each,
so the hosts' slices are disjoint and their union is the global batch (the
order `jax.make_array_from_process_local_data` expects). Every host computes
the plan over all lengths, so T is decided globally:
    "buckets"  the smallest bucket >= the longest row of the global batch (few shapes, no recompiles)
    "max"      max_length for every batch (one shape)
    "longest"  the longest row of the global batch (least padding, a shape per length)
group_by_length=W (training): windows of W global batches are sorted by length and
cut into batches, whose order is then shuffled: far less padding for a small
change in what shares a batch (deterministic from (seed, epoch) too).
Padding rows attend to their first position only, so no softmax row is empty.

Packing several examples into one row is not offered: no model reads segment
ids or per-example positions, so packed examples would attend to each other.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from adapters_jax.errors import DataError

PADDINGS = ("buckets", "max", "longest")


class Batches:
    def __init__(self, token_ids: Sequence[np.ndarray], labels, batch_size: int, *,
                 padding: str = "buckets", buckets: Sequence[int] = (32, 64, 128), max_length: int | None = None,
                 pad_id: int = 0, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, repeat: bool = True, process_index: int = 0, process_count: int = 1,
                 group_by_length: int = 0, loss_masks: Sequence[np.ndarray] | None = None):
        self.ids = [np.asarray(x, dtype=np.int32) for x in token_ids]
        self.loss_masks = None if loss_masks is None else [np.asarray(m, dtype=np.int32) for m in loss_masks]
        self.labels = np.asarray(labels, dtype=np.int32)
        self.lengths = np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))
        n = len(self.ids)
        if n == 0:
            raise DataError("no examples to batch (empty split)")
        if len(self.labels) != n:
            raise DataError(f"{n} token sequences but {len(self.labels)} labels")
        if self.loss_masks is not None and [len(m) for m in self.loss_masks] != [len(x) for x in self.ids]:
            raise DataError("loss_masks must give one mask per sequence, as long as its tokens")
        if padding not in PADDINGS:
            why = " (no packing: no model reads segment ids)" if padding == "pack" else ""
            raise DataError(f"padding={padding!r}; choose one of {PADDINGS}{why}")
        if batch_size <= 0 or process_count <= 0 or batch_size % process_count:
            raise DataError(f"batch_size={batch_size} must be a positive multiple of process_count={process_count}")
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index={process_index} outside 0..{process_count - 1}")
        longest = int(self.lengths.max())
        self.buckets = tuple(sorted(int(b) for b in buckets))
        if padding == "buckets" and (not self.buckets or self.buckets[-1] < longest):
            raise DataError(f"the longest sequence has {longest} tokens but the largest bucket is "
                            f"{self.buckets[-1] if self.buckets else None}; add a bucket >= {longest} or truncate")
        self.max_length = int(max_length) if max_length is not None else longest
        if padding == "max" and self.max_length < longest:
            raise DataError(f"max_length={self.max_length} is shorter than the longest sequence ({longest} tokens)")
        self.padding, self.pad_id = padding, int(pad_id)
        self.batch_size, self.local_batch = int(batch_size), int(batch_size) // int(process_count)
        self.shuffle, self.drop_last, self.repeat = shuffle, drop_last, repeat
        self.process_index, self.process_count = int(process_index), int(process_count)
        self.seed, self.epoch, self.step = int(seed), 0, 0
        if group_by_length < 0:
            raise DataError(f"group_by_length={group_by_length} must be >= 0")
        self.group_by_length = int(group_by_length)
        self._plan_cache: tuple[int, list] | None = None
        if not self._plan(0):
            raise DataError(f"{n} examples make no full batch of {batch_size} with drop_last=True")

    # ------------------------------------------------------------ position

    def state(self) -> dict:
        """The position of the next batch: JSON-serialisable, the same on every host."""
        return {"seed": self.seed, "epoch": self.epoch, "step": self.step}

    def restore(self, state: dict) -> None:
        missing = {"seed", "epoch", "step"} - set(state)
        if missing:
            raise DataError(f"data state {state!r} lacks {sorted(missing)}")
        try:
            seed, epoch, step = (int(state[k]) for k in ("seed", "epoch", "step"))
        except (TypeError, ValueError):
            raise DataError(f"data state {state!r}: seed, epoch and step must be integers") from None
        self.seed, self._plan_cache = seed, None
        if not 0 <= step <= len(self._plan(epoch)):
            raise DataError(f"data state step={step} outside epoch {epoch}'s {len(self._plan(epoch))} steps")
        self.epoch, self.step = epoch, step

    def steps_per_epoch(self, epoch: int | None = None) -> int:
        return len(self._plan(self.epoch if epoch is None else epoch))

    def __len__(self) -> int:
        return self.steps_per_epoch()

    # ------------------------------------------------------------ plan

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.ids))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))

    def _plan(self, epoch: int) -> list[list]:
        """The epoch's global batches: lists of example indices."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        order = self._order(epoch).tolist()
        B = self.batch_size
        if self.group_by_length and self.shuffle:
            plan = self._grouped(order, epoch)
        else:
            plan = [order[i:i + B] for i in range(0, len(order), B)]
        if plan and self.drop_last and len(plan[-1]) < B:
            plan.pop()
        self._plan_cache = (epoch, plan)
        return plan

    def _grouped(self, order: list[int], epoch: int) -> list[list[int]]:
        """Windows of group_by_length batches, sorted by length inside, cut into batches, batches shuffled.

        Similar lengths share a batch, so most batches fit a small bucket (less padding), while the
        window keeps the data mixed; the tail batch (if partial) stays last so drop_last drops it.
        """
        B, W = self.batch_size, self.group_by_length * self.batch_size
        n_full = len(order) // B * B
        body, tail = order[:n_full], order[n_full:]
        batches = []
        for w in range(0, len(body), W):
            window = sorted(body[w:w + W], key=lambda i: int(self.lengths[i]))
            batches += [window[i:i + B] for i in range(0, len(window), B)]
        perm = np.random.default_rng([self.seed, epoch, 1]).permutation(len(batches))
        return [batches[i] for i in perm] + ([tail] if tail else [])

    # ------------------------------------------------------------ batches

    def _width(self, batch: list[int]) -> int:
        if self.padding == "max":
            return self.max_length
        longest = int(max(self.lengths[i] for i in batch))
        if self.padding == "longest":
            return max(longest, 1)
        return next(b for b in self.buckets if b >= longest)

    def batch(self, epoch: int, step: int) -> dict[str, np.ndarray]:
        """This process's slice of global batch `step` of `epoch` (no change of position)."""
        batch = self._plan(epoch)[step]
        T = self._width(batch)
        lo = self.process_index * self.local_batch
        mine = batch[lo:lo + self.local_batch]
        mine = mine + [None] * (self.local_batch - len(mine))  # padding rows
        return self._rows(mine, T)

    def _rows(self, rows: list, T: int) -> dict[str, np.ndarray]:
        b = len(rows)
        ids = np.full((b, T), self.pad_id, np.int32)
        mask = np.zeros((b, T), np.int32)
        labels = np.zeros((b,), np.int32)
        index = np.full((b,), -1, np.int32)
        loss = np.zeros((b, T), np.int32)
        for r, i in enumerate(rows):
            if i is None:
                mask[r, 0] = 1
                continue
            n = int(self.lengths[i])
            ids[r, :n] = self.ids[i]
            mask[r, :n] = 1
            labels[r], index[r] = self.labels[i], i
            if self.loss_masks is not None:
                loss[r, :n] = self.loss_masks[i]
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels, "example_mask": index >= 0, "index": index}
        if self.loss_masks is not None:
            out["loss_mask"] = loss
        return out

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        while True:
            while self.step < len(self._plan(self.epoch)):
                batch = self.batch(self.epoch, self.step)
                self.step += 1
                yield batch
            self.epoch, self.step = self.epoch + 1, 0
            if not self.repeat:
                return


def eval_batches(token_ids, labels, batch_size: int, **kwargs) -> Batches:
    """One ordered pass, the last batch padded and masked: every example counted once across hosts."""
    return Batches(token_ids, labels, batch_size, shuffle=False, drop_last=False, repeat=False, **kwargs)
