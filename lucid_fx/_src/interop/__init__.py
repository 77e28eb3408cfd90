"""Interop: torch's formats (state dicts both ways, tensors and host arrays), and a model's
weights in and out."""
