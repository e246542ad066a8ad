"""Training: optimizer from the labels, train/eval steps, the loop (scripts/train.py drives it)."""
