"""Functional Flax adapter modules: bottleneck, LoRA, IA3, prefix and prompt tuning."""
