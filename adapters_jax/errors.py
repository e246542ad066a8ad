"""The library's one error family: every refusal is an `AdaptersJaxError` whose message names the cause.

Entry points (scripts/) catch `AdaptersJaxError` and print one `error: ...` line
with a non-zero exit status; anything else is a bug and keeps its traceback.
This module imports nothing, so every layer (data/ included) may use it.

    AdaptersJaxError
      ConfigError        an adapter config string or experiment config that cannot be used
      CheckpointError    a model checkpoint (HF dir, GGUF) or a training checkpoint that cannot be read/resumed
      DataError          a data set, data file or batching request that cannot be used
        AssetError       an asset that cannot be fetched or does not match its pinned sha256
      InteropError       PEFT/AdapterHub tensors that do not fit the model's adapter
      ParallelError      a strategy or mesh that cannot run on these devices
      TrainingError      a run that cannot go on (NaN loss, a workdir that already holds a run)
"""
from __future__ import annotations


class AdaptersJaxError(Exception):
    """Base of every error the library raises on purpose; the message says what was wrong and what to do."""


class ConfigError(AdaptersJaxError, ValueError):
    """An adapter config string or value that cannot be used; the message says what is valid."""


class CheckpointError(AdaptersJaxError, ValueError):
    """A model checkpoint or a training checkpoint that cannot be loaded or resumed: the message names the file."""


class DataError(AdaptersJaxError, ValueError):
    """A task, data file or batching request that cannot be used: the message names the file, column or value."""


class AssetError(DataError):
    """An asset that cannot be fetched, or whose bytes do not match their pinned sha256."""


class InteropError(AdaptersJaxError, ValueError):
    """Adapter weights from another library that do not fit the model's adapter: the message names the tensor."""


class ParallelError(AdaptersJaxError, ValueError):
    """A strategy or mesh that cannot run here; the message says what and what to change."""


class TrainingError(AdaptersJaxError, RuntimeError):
    """The run cannot go on (NaN loss, an occupied workdir); the message says what and what was kept."""
