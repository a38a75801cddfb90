"""A checkpoint's record of its vision encoder: written into config.json, read back into extract's settings, and for
checkpoints written before the record, read from metrics.json `config.vision` (the legacy fallback)."""
from __future__ import annotations

import json

import helpers
import pytest

from exit_codes import UsageError
from rpihmif.checkpoint import read_checkpoint_config
from rpihmif.checkpoint_config import vision_record_of
from rpihmif.errors import ModelError
from rpihmif.vision_encoder import VisionSettings, settings_from_record, vision_record


@pytest.fixture(scope="module")
def vision_ckpt(tmp_path_factory, tiny_bert_dir):
    return helpers.vision_checkpoint(tmp_path_factory.mktemp("vck") / "ckpt", tiny_bert_dir)


def test_record_round_trips_into_the_settings(vision_ckpt):
    config, _ = read_checkpoint_config(vision_ckpt)
    record = vision_record_of(vision_ckpt, config)
    assert record["source"] == "random-init" and record["random_vit_layers"] == 1 and record["seed"] == 3
    assert settings_from_record(record) == VisionSettings(**helpers.TINY_VISION)


def test_folder_and_hub_records(tiny_clip_dir):
    folder = vision_record(VisionSettings(vit_name=str(tiny_clip_dir)), "ab" * 32)
    assert folder["vit_name"] == tiny_clip_dir.name and folder["source"] == "folder" and "/" not in folder["vit_name"]
    assert settings_from_record(folder, "/elsewhere/clip").vit_name == "/elsewhere/clip"
    hub = vision_record(VisionSettings(vit_name="openai/clip-vit-base-patch32"), "ab" * 32)
    assert hub["vit_name"] == "openai/clip-vit-base-patch32" and hub["source"] == "hub" and hub["weights_sha256"] == ""


def test_legacy_checkpoint_reads_metrics_config_vision(vision_ckpt, tmp_path):
    import shutil

    import rpihmif
    from pipeline.extract.from_checkpoint import vision_overrides

    old = tmp_path / "old"
    shutil.copytree(vision_ckpt, old)
    data = json.loads((old / "config.json").read_text())
    data["rpihmif"]["visual"].pop("encoder")
    (old / "config.json").write_text(json.dumps(data))
    with pytest.raises(UsageError, match="does not record its vision encoder"):
        vision_overrides(old)
    (old / "metrics.json").write_text(json.dumps({"config": {"vision": helpers.TINY_VISION}}))
    config, _ = read_checkpoint_config(old)
    assert config.visual.encoder == {}
    assert vision_record_of(old, config) == vision_record_of(vision_ckpt, read_checkpoint_config(vision_ckpt)[0])
    assert sorted(vision_overrides(old)) == sorted(vision_overrides(vision_ckpt))
    images = helpers.draw_images(tmp_path / "img", 1)
    got = rpihmif.load(old, device="cpu", precision="fp32")(["obama in london"], images=[str(tmp_path / "img" / images[0])])
    assert got[0]["image_used"]
    (old / "metrics.json").write_text(json.dumps({"config": {"vision": {**helpers.TINY_VISION, "image_size": "big"}}}))
    with pytest.raises(ModelError, match="metrics.json"):
        vision_overrides(old)
