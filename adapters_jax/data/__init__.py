"""Data: offline assets, labelled tasks, tokenisation cache, batching.

    assets    pinned models and data: fetch(name) -> directory, model_path(name)
    tasks     load(name) -> Task (DatasetDict train/validation/test + label names)
    tokenize  encode(task, tokenizer, max_length) -> per-split token ids, cached on disk
    batching  Batches: buckets / pad-to-max / packing, resumable, per-host slices
"""
