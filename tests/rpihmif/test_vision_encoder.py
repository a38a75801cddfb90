"""Encoder fingerprints: the same encoder gets the same id in any process; another weight, size or dtype another id.

The id names a feature-cache folder, so it must be stable across runs and distinct for anything that changes features.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import torch

from rpihmif.vision_encoder import Preprocessor, VisionSettings, encoder_fingerprint, load_vision_encoder

SNIPPET = """
import json, sys
from rpihmif.vision_encoder import Preprocessor, VisionSettings, encoder_fingerprint, load_vision_encoder
s = VisionSettings(**json.loads(sys.argv[1]))
print(encoder_fingerprint(load_vision_encoder(s), s, Preprocessor.for_encoder(s.vit_name))["id"])
"""


def _id(settings: VisionSettings) -> str:
    return encoder_fingerprint(load_vision_encoder(settings), settings, Preprocessor.for_encoder(settings.vit_name))["id"]


def _id_in_new_process(settings: VisionSettings) -> str:
    out = subprocess.run([sys.executable, "-c", SNIPPET, json.dumps(dataclasses.asdict(settings))],
                         capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip().splitlines()[-1]


def test_same_encoder_same_id_across_processes(tiny_clip_dir):
    folder = VisionSettings(vit_name=str(tiny_clip_dir))
    random_init = VisionSettings(random_vit_layers=1, random_vit_hidden=64, seed=3)
    assert _id(folder) == _id(folder) == _id_in_new_process(folder)
    assert _id(random_init) == _id_in_new_process(random_init) and _id(random_init).startswith("rand-")


def test_changed_weight_gives_another_id(tiny_clip_dir, tmp_path):
    base = VisionSettings(vit_name=str(tiny_clip_dir))
    model = load_vision_encoder(base)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3  # one weight, slightly
    model.save_pretrained(str(tmp_path / "changed"))
    assert _id(VisionSettings(vit_name=str(tmp_path / "changed"))) != _id(base)
    assert _id(VisionSettings(random_vit_layers=1, random_vit_hidden=64, seed=4)) != \
        _id(VisionSettings(random_vit_layers=1, random_vit_hidden=64, seed=3))


def test_changed_size_or_dtype_gives_another_id(tiny_clip_dir):
    base = VisionSettings(vit_name=str(tiny_clip_dir))
    ids = {_id(base)} | {_id(dataclasses.replace(base, **change)) for change in (
        {"image_size": 192}, {"aux_size": 96}, {"rcnn_size": 96}, {"max_crops": 2}, {"dtype": "float32"})}
    assert len(ids) == 6
