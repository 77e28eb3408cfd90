"""The functional face: each optimizer as a pure ``init``/``update`` pair, one module per
algorithm (its kernel, state and factory), over the shared kernel skeleton."""
