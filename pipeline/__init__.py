"""Batch stages of the RPI-HMIF pipeline and their I/O: readers, feature cache, trainer, tagging, reports.

Imports run one way: `cli.py` -> `pipeline/` -> `rpihmif/`.
"""
