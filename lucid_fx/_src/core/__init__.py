"""The shared core: the transform protocol, checks, dtypes, traced scalars, the state schema,
placement and flat layouts. It imports nothing else of lucid_fx."""
