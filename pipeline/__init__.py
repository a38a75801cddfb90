"""The batch stages of the RPI-HMIF pipeline and their I/O, one sub-package per room: io, runtime, extract, train, tag.

Imports run one way: `cli.py` -> `pipeline/` -> `cache/` -> `rpihmif/`, with `exit_codes` below them all.
"""
