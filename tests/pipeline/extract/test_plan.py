"""extract-features planning: a rerun on a complete cache reads no image and loads no encoder; the memo is verified.

Hashes are remembered by (size, mtime, ctime, inode); a changed file is hashed again, a malformed memo is ignored.
"""
from __future__ import annotations

import json
import logging
import os

import pytest
from helpers import draw_image, make_dataset, make_tiny_clip

import cache.fingerprints as fingerprints_mod
import cache.memo as memo_mod
import pipeline.extract.items as items_mod
import rpihmif.vision_features as vision_features_mod
from cache.memo import MEMO_NAME
from pipeline.extract.plan import plan_extract
from pipeline.extract.stage import run_extract
from pipeline.stage_config import stage_config


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A tiny dataset (5 images, crops) and CLIP folder; files count as settled at once (no racy window)."""
    monkeypatch.setattr(memo_mod, "RACY_NS", -10**12)
    clip = make_tiny_clip(tmp_path / "clip")
    root = make_dataset(tmp_path / "data", n_images=5)
    config = stage_config("extract", overrides=[f"data_dir={tmp_path / 'data'}", f"cache_dir={tmp_path / 'cache'}",
                                                f"vision.vit_name={clip}", "workers=0", "shard_size=4"])
    return config, root, clip


@pytest.fixture
def counted(monkeypatch):
    """Counts file hashes and encoder loads made from now on."""
    calls = {"hash": 0, "encoder": 0}
    real_hash, real_load = items_mod.sha256_file, fingerprints_mod.load_vision_encoder

    def hash_(path, *a, **k):
        calls["hash"] += 1
        return real_hash(path, *a, **k)

    def load(*a, **k):
        calls["encoder"] += 1
        return real_load(*a, **k)

    monkeypatch.setattr(items_mod, "sha256_file", hash_)
    monkeypatch.setattr(fingerprints_mod, "load_vision_encoder", load)  # the fingerprint
    monkeypatch.setattr(vision_features_mod, "load_vision_encoder", load)  # the in-process featurizer
    return calls


def test_rerun_on_complete_cache_hashes_nothing_and_loads_no_encoder(world, counted):
    config, _, _ = world
    first = run_extract(config)
    assert first.computed == 5 and first.files_hashed == 5
    assert counted == {"hash": 5, "encoder": 2}  # the fingerprint, then the in-process featurizer
    counted.update(hash=0, encoder=0)
    again = run_extract(config)
    assert (again.to_compute, again.computed, again.reused, again.files_hashed) == (0, 0, 5, 0)
    assert counted == {"hash": 0, "encoder": 0}


def test_changed_mtime_or_size_is_hashed_again(world, counted):
    config, root, _ = world
    run_extract(config)
    images = sorted((root / "twitter2015_images").iterdir())
    st = images[0].stat()
    os.utime(images[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
    draw_image(images[1], seed=99, size=(50, 40), fmt="PNG")  # new content and size
    counted.update(hash=0, encoder=0)
    plan = plan_extract(config)
    assert counted == {"hash": 2, "encoder": 0} and plan.files_hashed == 2
    assert [it.path.name for it in plan.todo] == [images[1].name]  # the touched file kept its key: reused
    counted.update(hash=0)
    assert plan_extract(config).files_hashed == 0 and counted["hash"] == 0  # both remembered again


def test_racy_files_are_not_remembered(world, counted, monkeypatch):
    config, _, _ = world
    monkeypatch.setattr(memo_mod, "RACY_NS", 10**15)  # every file counts as just written
    plan_extract(config)
    counted.update(hash=0)
    assert plan_extract(config).files_hashed == 5 and counted["hash"] == 5


@pytest.mark.parametrize("content", ["{not json", json.dumps({"version": 1, "hashes": {"/x": [1, 2, 3, 4, "zz"]},
                                                              "fingerprints": {}}),
                                     "tampered-fingerprint"])
def test_malformed_memo_is_ignored_with_a_warning(world, counted, caplog, content):
    config, _, _ = world
    plan_extract(config)
    memo = world[0].cache_dir + "/" + MEMO_NAME
    if content == "tampered-fingerprint":
        data = json.loads(open(memo).read())
        for fp in data["fingerprints"].values():
            fp["hashed"]["image_size"] = 999  # the id no longer matches what it claims to hash
        content = json.dumps(data)
    with open(memo, "w") as f:
        f.write(content)
    counted.update(hash=0, encoder=0)
    with caplog.at_level(logging.WARNING, logger="rpihmif.extract"):
        plan = plan_extract(config)
    assert f"{MEMO_NAME}: ignored" in caplog.text
    assert plan.files_hashed == 5 and counted == {"hash": 5, "encoder": 1}
    counted.update(hash=0, encoder=0)
    plan_extract(config)  # the memo was rewritten whole
    assert counted == {"hash": 0, "encoder": 0}


def test_changed_encoder_folder_is_fingerprinted_again(world, counted):
    config, _, clip = world
    plan_extract(config)
    weights = next(p for p in clip.iterdir() if p.suffix == ".safetensors")
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    counted.update(encoder=0)
    plan_extract(config)
    assert counted["encoder"] == 1
