"""make-sample --hard: a crop-cued tweet's original is a plain neutral picture; other tweets are unchanged."""
import json

from pipeline.io.sample import CUES_FILE, make_sample

SMALL = {"train": 30, "valid": 12, "test": 12}


def test_hard_sample_changes_only_the_originals_of_crop_cued_tweets(tmp_path):
    easy, hard = make_sample(tmp_path / "e", seed=1, sizes=SMALL), make_sample(tmp_path / "h", seed=1, sizes=SMALL, hard=True)
    assert hard["hard"] is True and "hard" not in easy
    cues = json.loads((tmp_path / "h" / "twitter2015" / CUES_FILE).read_text())
    changed = {p.stem for p in (tmp_path / "h" / "twitter2015" / "twitter2015_images").glob("*.jpg")
               if p.read_bytes() != (tmp_path / "e" / "twitter2015" / "twitter2015_images" / p.name).read_bytes()}
    crop_cued = {i for i, c in cues.items() if c["cue_source"] in ("grounding", "rcnn")}
    assert changed and changed <= crop_cued
