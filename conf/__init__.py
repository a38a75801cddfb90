"""The stage yamls (extract, train, evaluate, tag): every knob with its default and a one-line comment.

Shipped as package data, so `pip install .` finds them; `--config FILE` replaces one for a run.
"""
