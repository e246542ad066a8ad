"""adapters_jax: adapter-based parameter-efficient fine-tuning in JAX/Flax.

    import adapters_jax as aj
    base = aj.load("minilm-l6")
    model, params = aj.add_adapters(base, "houlsby[bottleneck=64]", head=aj.heads.Classification(2))
    mask = aj.trainable_mask(model, params)
    print(aj.param_report(params, mask))
"""
__version__ = "0.1.0"

from adapters_jax import errors, paths  # noqa: E402,F401
from adapters_jax.errors import AdaptersJaxError  # noqa: E402,F401
from adapters_jax.models import Loaded, load  # noqa: E402
from adapters_jax.models import heads  # noqa: E402
from adapters_jax.adapters import (  # noqa: E402
    activate, adapter_drop, add_adapters, load_adapter, merge_lora, save_adapter, unmerge_lora,
)
from adapters_jax.configs import AdapterConfigError, parse  # noqa: E402
from adapters_jax.adapter_setup import AdapterSetup  # noqa: E402
from adapters_jax.partition import labels, merge, param_report, split, trainable_mask  # noqa: E402
from adapters_jax import interop  # noqa: E402,F401
from adapters_jax.decoding import Completion, generate  # noqa: E402,F401
from adapters_jax import bank  # noqa: E402,F401
from adapters_jax.merging import merge_adapters  # noqa: E402,F401
from adapters_jax import composition  # noqa: E402,F401
from adapters_jax.export import export_merged  # noqa: E402,F401
