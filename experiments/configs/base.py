"""Defaults shared by every experiment config (each config file overrides a few fields)."""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "minilm-l6"  # asset name, HF-format directory or .gguf file
    # model config fields to override at load (e.g. {"hidden_dropout_prob": 0.0}); the weights' fingerprint
    # does not depend on them, so adapters trained this way load onto the plain base
    c.model_overrides = ml_collections.ConfigDict()
    c.dtype = "float32"  # compute dtype: float32 or bfloat16 (params and optimizer state stay float32)
    c.task = "rt_polarity"  # built-in task, a local .csv/.json/.parquet path, or a hub data set name
    # for a local .csv/.json/.parquet file or hub set (ignored for built-in tasks); split rules: docs/assets.md.
    # No split column: the sha1 rule. Train and test only: validation="from_train" carves validation out of
    # train by the same hash, "none" trains without one; task.split_rule states the rule used and the counts.
    c.task_kwargs = ml_collections.ConfigDict({
        "text_column": "text", "label_column": "label",
        "split_column": ml_collections.config_dict.placeholder(str),
        "validation": "from_train",
        # prompt/response files (task_kind "instruct"): the text column holds the prompts, this one the
        # responses (set the templates to "{text}" and "{label}" to use both verbatim)
        "response_column": ml_collections.config_dict.placeholder(str),
    })
    # what the run trains (adapters_jax/train/kinds.py): classification (a head, accuracy) | lm (next token on
    # the task's texts, perplexity) | instruct (prompt/response pairs from the templates below, loss on the
    # response only, perplexity and exact-match accuracy of greedy generation)
    c.task_kind = "classification"
    c.instruct = ml_collections.ConfigDict({
        "prompt_template": "Text: {text}\nLabel:", "response_template": " {label}",
        "response_names": [],  # words for the labels (default: the task's label names)
        "chat_template": False,  # wrap the prompt in the tokenizer's chat template
        "max_distinct": 32,  # exact-match accuracy only when the responses are this label-like
    })
    c.pad_token = ""  # "": the tokenizer's pad token (an error if it has none); else a token of its vocabulary
    # multi-task (adapters_jax/train/multitask.py): two or more tasks, one adapter each in one bank, trained at
    # once on mixed batches; rows drawn proportional to the train sizes, their 1/temperature power, or uniform
    c.tasks = []
    c.multitask = ml_collections.ConfigDict({"sampling": "proportional", "temperature": 2.0})
    c.adapter = "houlsby[bottleneck=64,non_linearity=relu]"  # config string; "none" for head-only / full FT
    c.adapter_name = "default"
    # AdapterDrop (Rueckle et al. 2021): no adapter in the lowest `layers` layers; random=True draws n in
    # 0..layers per training step (robust AdapterDrop; evaluation then runs every layer)
    c.adapter_drop = ml_collections.ConfigDict({"layers": 0, "random": False})
    c.full_finetune = False  # train every base param too (label "base")
    c.train_rules = []  # extra (regex, label) rules, e.g. [("(^|/)bias$", "bias")] for BitFit
    c.head = ml_collections.ConfigDict({"pooling": "mean", "hidden_layers": 0, "dropout": 0.1})
    c.max_length = 64
    c.padding = "buckets"  # buckets | max | longest
    c.buckets = (32, 48, 64)  # each bucket is one compiled shape
    c.group_by_length = 20  # sort windows of 20 batches by length (0: plain shuffle)
    c.batch_size = 32
    c.eval_batch_size = 128
    c.epochs = 2
    c.max_steps = 0  # > 0: stop after this many steps (the schedule spans them)
    c.eval_every = 0  # steps; 0 = once per epoch
    c.max_eval_examples = 0  # > 0: evaluate on each split's first N examples only (the report says so)
    c.log_every = 10
    c.seed = 0
    c.progress = True
    c.optimizer = ml_collections.ConfigDict({
        "name": "adamw", "lr": 1e-3, "warmup": 0.1, "schedule": "linear", "weight_decay": 0.01,
        "clip_norm": 1.0, "group_lr": {},
    })
    # where the state lives (docs/parallel.md): single | pmap (data parallel, replicated) | mesh (jit over a
    # (data, fsdp, tensor) Mesh; -1 = the devices the others leave; the frozen base sharded by rules)
    c.strategy = "single"
    c.mesh = ml_collections.ConfigDict({"shape": (-1, 1, 1), "shard_trainable": False, "min_shard_bytes": 2**20})
    c.checkpoint = ml_collections.ConfigDict({"keep": 2, "keep_best": True, "every": 0, "async_save": True})
    return c
