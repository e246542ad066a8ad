"""adapters_jax: adapter-based parameter-efficient fine-tuning in JAX/Flax.

    import adapters_jax as aj
    base = aj.load("minilm-l6")
    model, params = aj.add_adapters(base, "houlsby[bottleneck=64]", head=aj.heads.Classification(2))
    mask = aj.trainable_mask(model, params)
    print(aj.param_report(params, mask))
"""
__version__ = "0.1.0"

from adapters_jax.models import Loaded, load  # noqa: E402
from adapters_jax.models import heads  # noqa: E402
