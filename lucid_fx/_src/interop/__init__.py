"""Interop: torch's formats (optimizer state dicts both ways, tensors and host arrays)."""
