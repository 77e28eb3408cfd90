"""The stateful face: Parameters and their packed storage, the generic optimizer, its
compiled step and state dicts, autodiff, gradient clipping, LBFGS and torch's classes."""
