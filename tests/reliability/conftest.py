"""Fixtures of the reliability suite: a tiny CLIP folder, a tiny multimodal dataset + dump, a tiny tag checkpoint.

All inputs are generated into tmp folders (nothing binary is committed); tiny models keep the suite within minutes.
"""
from __future__ import annotations

import dataclasses

import helpers
import pytest
from helpers import draw_image, make_dataset


@pytest.fixture(scope="session")
def extract_inputs(tmp_path_factory) -> dict:
    """A DeepKE-layout dataset (8 images, crops, one retweet copy, one missing) and a dump of 10 image records."""
    root = tmp_path_factory.mktemp("rel_extract")
    ds = make_dataset(root / "data", n_images=8, copies=1)
    dump_dir = root / "dump"
    recs = []
    for i in range(10):
        draw_image(dump_dir / f"img/{i}.jpg", seed=500 + i, fmt="JPEG")
        draw_image(dump_dir / f"img/{i}_c.png", seed=600 + i, size=(40, 40), fmt="PNG")
        recs.append({"id": f"d{i}", "text": f"tweet {i}", "image": f"img/{i}.jpg", "crops": [f"img/{i}_c.png"]})
    dump = helpers.write_dump(dump_dir / "tweets.jsonl", recs)
    return {"data_dir": ds.parent, "dataset": ds.name, "dump": dump}


@pytest.fixture(scope="session")
def tag_world(tmp_path_factory, tiny_bert_dir) -> dict:
    """A briefly trained tiny checkpoint, dump images (2 of 3 cached) and a feature cache of its encoder id."""
    root = tmp_path_factory.mktemp("rel_tag")
    cfg = helpers.tiny_model_config(tiny_bert_dir)
    ckpt = helpers.train_tiny_checkpoint(cfg, root / "ckpt", steps=40)
    images = helpers.draw_images(root / "dumps", 3)
    helpers.make_feature_cache(root / "cache", cfg.visual.spec(), images[:2])
    return {"root": root, "ckpt": ckpt, "cache": root / "cache", "images": images,
            "spec": dataclasses.asdict(cfg.visual.spec())}


@pytest.fixture(scope="session")
def world(tmp_path_factory, tiny_bert_dir) -> dict:
    """A sample, its cache (several shards) from a tiny CLIP, and a 1-epoch checkpoint trained on that cache."""
    from rel_helpers import cli, sets

    from pipeline.io.sample import make_sample

    root = tmp_path_factory.mktemp("world")
    make_sample(root / "data", seed=0, sizes={"train": 16, "valid": 8, "test": 6})
    clip = helpers.make_tiny_clip(root / "clip")
    extract = ["extract-features", *sets(data_dir=root / "data", dataset="twitter2015", vit_name=clip,
                                         cache_dir=root / "cache", workers=0, batch_size=4, shard_size=6,
                                         device="cpu"), "--dump", root / "data" / "tweets.jsonl.gz"]
    res = cli(*extract)
    assert res.exit_code == 0, res.stderr
    train = ["train", *sets(data_dir=root / "data", dataset="twitter2015", cache_dir=root / "cache", vit_name=clip,
                            bert_name=tiny_bert_dir, save_path=root / "run", device="cpu", max_seq=48,
                            train_batch_size=8, num_epochs=1, him__hidden=16, him__num_capsules=2, him__heads=2)]
    res = cli(*train)
    assert res.exit_code == 0, res.stderr
    return {"root": root, "extract": extract, "train": train, "ckpt": root / "run" / "best", "clip": clip}
