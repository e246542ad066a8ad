"""Where adapters enter a model's forward pass (filled in by the adapter issue)."""


def scale_linear_input(linear, x):
    return x


def linear_output(linear, x, y, deterministic):
    return y
