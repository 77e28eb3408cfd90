"""The stateful face: Parameters and their packed storage, the generic optimizer, its
compiled step and state dicts, a model's weights in and out, autodiff, gradient clipping,
LBFGS and torch's classes."""
