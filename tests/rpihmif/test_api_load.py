"""rpihmif.load: raw tweets tagged in-process give tag-corpus's rows (text-only and with images through a cache), and
the Tagger refuses a string where a word list belongs."""
from __future__ import annotations

import helpers
import pytest

import rpihmif
from rpihmif.errors import ModelError


def _same(api_rows, parquet_rows):
    """Identical spans and types; scores and routing within 1e-4; the same image flag."""
    assert len(api_rows) == len(parquet_rows)
    for got, (_, want) in zip(api_rows, parquet_rows.iterrows()):
        assert got["text"] == want["text"] and got["tokens"] == list(want["tokens"])
        assert got["image_used"] == bool(want["image_used"])
        ents = list(want["entities"])
        assert [(e["start_char"], e["end_char"], e["type"], e["text"], e["start_token"], e["end_token"])
                for e in got["entities"]] == [(e["start_char"], e["end_char"], e["type"], e["text"],
                                               e["start_token"], e["end_token"]) for e in ents]
        for a, b in zip(got["entities"], ents):
            for key in ("score", "routing_orig", "routing_grounding", "routing_rcnn"):
                if b[key] is None:
                    assert a[key] is None, key
                else:
                    assert a[key] == pytest.approx(b[key], abs=1e-4), key


def _tag_corpus(dump, out, ckpt, cache, *more):
    from pipeline.stage_config import stage_config
    from pipeline.tag.stage import run_tag

    sets = {"load_path": str(ckpt), "out": str(out), "cache_dir": str(cache), "batch_size": 8, "threads": 1,
            "precision": "fp32", "device": "cpu"}
    run_tag([dump], stage_config("tag", overrides=[f"{k}={v}" for k, v in sets.items()] + list(more)))
    rows = helpers.tag_rows(out)
    rows["n"] = rows["id"].str[1:].astype(int)
    return rows.sort_values("n").reset_index(drop=True)


def test_text_only_equals_tag_corpus(tag_env, tmp_path):
    records = helpers.tweets(12)
    dump = helpers.write_dump(tmp_path / "d.jsonl", records)
    rows = _tag_corpus(dump, tmp_path / "out", tag_env["ckpt"], tmp_path / "nocache")
    tagger = rpihmif.load(tag_env["ckpt"], device="cpu", precision="fp32")
    _same(tagger([r["text"] for r in records], batch_size=8), rows)
    one = tagger(records[0]["text"])  # one tweet: its entities
    assert one == tagger([records[0]["text"]])[0]["entities"]
    assert any(r["entities"] for r in tagger([r["text"] for r in records]))  # the tiny model finds entities


def test_run_folder_is_accepted(tag_env, tmp_path):
    import shutil

    shutil.copytree(tag_env["ckpt"], tmp_path / "run" / "best")
    assert rpihmif.load(tmp_path / "run", device="cpu").folder == tmp_path / "run" / "best"


def test_images_equal_tag_corpus_over_a_cache(tiny_bert_dir, tmp_path):
    from pipeline.extract.stage import run_extract
    from pipeline.stage_config import stage_config

    ckpt = helpers.vision_checkpoint(tmp_path / "ckpt", tiny_bert_dir)
    images = helpers.draw_images(tmp_path / "dumps", 3)
    records = helpers.tweets(9, images)
    records[4].pop("image")  # one tweet without image
    records[4].pop("crops")
    dump = helpers.write_dump(tmp_path / "dumps" / "d.jsonl", records)
    vision = [f"vision.{k}={v}" for k, v in helpers.TINY_VISION.items()]
    run_extract(stage_config("extract", overrides=[f"cache_dir={tmp_path / 'cache'}", "dataset=", "workers=0",
                                                   "precision=fp32", *vision]), dumps=[dump])
    rows = _tag_corpus(dump, tmp_path / "out", ckpt, tmp_path / "cache")
    assert rows["image_used"].sum() == 8
    tagger = rpihmif.load(ckpt, device="cpu", precision="fp32")
    root = tmp_path / "dumps"
    inputs = [{"image": str(root / r["image"]), "crops": [str(root / c) for c in r["crops"]]} if "image" in r else None
              for r in records]
    got = tagger([r["text"] for r in records], images=inputs, batch_size=8)
    _same(got, rows)
    assert any(e["routing_orig"] is not None for r in got for e in r["entities"])
    # a path or a PIL image of the original alone: crops masked, the image is used
    from PIL import Image

    with Image.open(inputs[0]["image"]) as im:
        alone = tagger([records[0]["text"]] * 2, images=[inputs[0]["image"], im.convert("RGB")])
    assert [r["image_used"] for r in alone] == [True, True]
    # prediction-time source control: the API and tag-corpus mask the same way
    only_orig = tagger([r["text"] for r in records], images=inputs, batch_size=8, sources=["orig"])
    _same(only_orig, _tag_corpus(dump, tmp_path / "out_orig", ckpt, tmp_path / "cache", "visual.sources=orig"))
    assert all(e["routing_grounding"] in (None, 0.0) for r in only_orig for e in r["entities"])
    no_image = tagger([r["text"] for r in records], images=inputs, batch_size=8, text_only=True)
    _same(no_image, _tag_corpus(dump, tmp_path / "out_text", ckpt, tmp_path / "cache", "text_only=true"))
    assert not any(r["image_used"] for r in no_image)


def test_predict_refuses_a_string_for_words(tag_env):
    tagger = rpihmif.load(tag_env["ckpt"], device="cpu").tagger
    with pytest.raises(TypeError, match="list of words"):
        tagger.predict(["Donald Trump visits London"])
    with pytest.raises(TypeError, match="rpihmif.load"):
        tagger.predict("Donald Trump visits London")


def test_missing_model_is_usage_error(tmp_path):
    with pytest.raises(ModelError, match="no such folder"):
        rpihmif.load(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not a checkpoint folder"):
        rpihmif.load(tmp_path)


def test_hub_id_offline_not_cached_is_usage_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError, match="offline mode is on"):
        rpihmif.load("nobody/no-such-rpihmif-model", device="cpu")
