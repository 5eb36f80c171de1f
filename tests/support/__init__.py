"""Test harness: a uvloop thread, scriptable upstreams that record every raw byte, raw clients."""
