"""extract-features end to end: embedded Ray and in-process runs, dedup, rejects, reruns, SIGKILL, a real Ray head."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import helpers
import numpy as np
import pytest
import torch
from helpers import draw_image, make_dataset, ray_head, write_dump

from cache.reader import open_cache
from pipeline.stage_config import stage_config
from pipeline.extract.stage import ClipFeaturizer, featurize_images, run_extract

REPO = helpers.ROOT
BAD = {"b_empty": b"", "b_text": b"not an image at all", "b_trunc": None}


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_clip_dir):
    tmp = tmp_path_factory.mktemp("extract")
    clip = tiny_clip_dir
    good = (tmp / "g.jpg")
    draw_image(good, seed=7, size=(120, 90), fmt="JPEG")
    bad = dict(BAD, b_trunc=good.read_bytes()[:300])
    make_dataset(tmp / "data", n_images=7, copies=3, bad=bad)
    return tmp, clip


def _config(tmp: Path, clip: Path, cache: str, **over) -> dict:
    sets = [f"data_dir={tmp / 'data'}", f"cache_dir={tmp / cache}", f"vit_name={clip}", "batch_size=3",
            "shard_size=4", "workers=0", "precision=fp32"] + [f"{k}={v}" for k, v in over.items()]
    return stage_config("extract", None, sets)


def _dump_cache(cache) -> dict:
    """key -> features, plus aliases: the cache's whole observable content."""
    return {"features": {k: cache.get(k) for k in sorted(cache.keys())}, "aliases": cache.aliases()}


def _assert_same(a: dict, b: dict, atol=1e-3) -> None:
    assert sorted(a["features"]) == sorted(b["features"])
    assert a["aliases"] == b["aliases"]
    for k, fa in a["features"].items():
        for name, value in fa.items():
            if name.endswith("_mask"):
                np.testing.assert_array_equal(value, b["features"][k][name])
            else:
                np.testing.assert_allclose(value.astype(np.float32), b["features"][k][name].astype(np.float32),
                                           atol=atol, rtol=1e-2)


@pytest.fixture(scope="module")
def inprocess(env):
    tmp, clip = env
    summary = run_extract(_config(tmp, clip, "cache_inproc"))
    return summary, open_cache(tmp / "cache_inproc")


def test_inprocess_run_summary_rejects_and_dedup(env, inprocess):
    tmp, _ = env
    summary, cache = inprocess
    # 7 distinct drawn images + 3 byte copies of image 0 + 3 bad files + 1 listed-but-missing image
    assert summary.images == 14 and summary.unique_images == 9
    assert summary.computed == 7 and summary.deduplicated == 3 and summary.reused == 0
    assert summary.rejected == 4
    assert summary.reject_reasons == {"empty": 1, "missing": 1, "not_an_image": 1, "truncated": 1}
    assert len(cache) == 7
    key0 = cache.key_for("twitter2015", "100.jpg")
    assert key0 and all(cache.key_for("twitter2015", f"9{c:02d}.jpg") == key0 for c in range(3))
    for bid in list(BAD) + ["missing"]:
        assert cache.key_for("twitter2015", f"{bid}.jpg") is None
        assert cache.alias_status("twitter2015", f"{bid}.jpg") == "no image"
    rejects = [json.loads(x) for x in (cache.folder / "rejects.jsonl").read_text().splitlines()]
    assert {(r["image_id"], r["reason"]) for r in rejects if r["kind"] == "image"} == {
        ("b_empty.jpg", "empty"), ("b_text.jpg", "not_an_image"), ("b_trunc.jpg", "truncated"),
        ("missing.jpg", "missing")}
    assert {(r["image_id"], r["kind"], r["reason"]) for r in rejects if r["kind"] != "image"} == {
        ("101.jpg", "grounding", "missing")}
    # crop masks follow the dataset: image i has i % 4 grounding crops (max 3) and (i + 1) % 3 RCNN crops
    for i in range(7):
        f = cache.get(cache.key_for("twitter2015", f"{100 + i}.jpg"))
        assert f["orig"].shape == (50, 32) and f["orig"].dtype == np.float16 and bool(f["orig_mask"])
        assert f["grounding"].shape == (3, 17, 32) and f["rcnn"].shape == (3, 5, 32)
        assert f["grounding_mask"].tolist() == [c < i % 4 for c in range(3)]
        assert f["rcnn_mask"].tolist() == [c < (i + 1) % 3 for c in range(3)]


def test_features_equal_a_direct_clip_forward(env, inprocess):
    from PIL import Image
    from transformers import CLIPVisionModel

    from rpihmif.vision_encoder import _image_processor_class

    tmp, clip = env
    _, cache = inprocess
    model = CLIPVisionModel.from_pretrained(str(clip)).eval()
    clip_proc = _image_processor_class()  # OpenAI CLIP's defaults: the tiny folder saves no preprocessor config

    def pre(image, size):
        proc = clip_proc(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        return proc(images=image, return_tensors="pt")["pixel_values"][0]
    root = tmp / "data" / "twitter2015"
    img = Image.open(root / "twitter2015_images" / "103.jpg").convert("RGB")
    crops = [Image.open(root / "twitter2015_aux_images/train/crops" / f"103_pred_yolo_crop_{c}.png").convert("RGB")
             for c in range(3)]
    with torch.inference_mode():
        orig = model(pixel_values=pre(img, 224)[None]).last_hidden_state[0].numpy()
        g = model(pixel_values=torch.stack([pre(c, 128) for c in crops]),
                  interpolate_pos_encoding=True).last_hidden_state.numpy()
    f = cache.get(cache.key_for("twitter2015", "103.jpg"))
    np.testing.assert_allclose(f["orig"].astype(np.float32), orig, atol=5e-3, rtol=5e-3)
    np.testing.assert_allclose(f["grounding"].astype(np.float32), g, atol=5e-3, rtol=5e-3)
    # the in-process featurizer (vision: online) gives the same features
    feat = ClipFeaturizer({"vit_name": str(clip)})
    online = featurize_images(feat, "twitter2015_images/103.jpg",
                              [f"twitter2015_aux_images/train/crops/103_pred_yolo_crop_{c}.png" for c in range(3)],
                              [], root)
    np.testing.assert_allclose(online["orig"].astype(np.float32), orig, atol=5e-3, rtol=5e-3)
    assert online["rcnn_mask"].tolist() == [False] * 3
    assert featurize_images(feat, "../../g.jpg", [], [], root) is None  # escapes the root
    assert featurize_images(feat, "twitter2015_images/b_text.jpg", [], [], root) is None


def test_rerun_computes_nothing_and_starts_no_ray(env, inprocess, monkeypatch):
    import pipeline.runtime.ray_cluster as rc

    def no_ray(*a, **k):
        raise AssertionError("a complete cache must not start Ray")

    monkeypatch.setattr(rc, "init_ray", no_ray)
    tmp, clip = env
    again = run_extract(_config(tmp, clip, "cache_inproc", workers=2))
    assert again.computed == 0 and again.to_compute == 0 and again.reused == 7
    assert again.shards_written == 0 and again.aliases_written == 0


def test_copies_cost_one_forward_and_dumps(env, monkeypatch):
    import rpihmif.vision_features as ef  # ClipFeaturizer calls `encode` through its ImageFeaturizer

    tmp, clip = env
    seen = []
    real = ef.encode
    monkeypatch.setattr(ef, "encode", lambda m, x: seen.append(x.shape[0]) or real(m, x))
    d = tmp / "dumpdir"
    img = draw_image(d / "imgs" / "a.png", seed=11, fmt="PNG")
    for c in range(4):
        (d / "imgs" / f"copy{c}.png").write_bytes(img.read_bytes())
    draw_image(d / "crop.png", seed=12, size=(40, 40), fmt="PNG")
    dump = write_dump(d / "tweets.jsonl", [
        {"id": i, "text": "hi", "image": f"imgs/copy{i % 4}.png", "crops": ["crop.png"]} for i in range(8)] + [
        {"id": 20, "text": "orig", "image": "imgs/a.png"},
        {"id": 21, "text": "escape", "image": "../../etc/passwd"},
        {"id": 22, "text": "no image"},
        "{not json",
        {"id": 23, "text": "bad crops", "image": "imgs/a.png", "crops": 5},
    ])
    summary = run_extract(_config(tmp, clip, "cache_dump", dataset=""), dumps=[dump])
    assert summary.computed == 1 and summary.deduplicated == 4 and summary.rejected == 1
    assert summary.rejected_records == 2
    assert sum(seen) == 2  # one original + its one grounding crop: 5 copies cost one forward
    cache = open_cache(tmp / "cache_dump")
    keys = {cache.key_for("dump", f"imgs/copy{c}.png") for c in range(4)} | {cache.key_for("dump", "imgs/a.png")}
    assert len(keys) == 1 and None not in keys
    assert cache.alias_status("dump", "../../etc/passwd") == "no image"
    reasons = {json.loads(x)["reason"] for x in (cache.folder / "rejects.jsonl").read_text().splitlines()}
    assert "unsafe_path" in reasons and any("JSON" in r for r in reasons)


def _kill_script(config: dict, kill_after_rows: int) -> str:
    return textwrap.dedent(f"""
        import json, os, signal, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests')!r}]
        from cache import writer as feature_cache
        from pipeline.extract.stage import run_extract
        real = feature_cache.CacheWriter.add_rows
        def add_rows(self, batch):
            real(self, batch)
            if self.rows_written >= {kill_after_rows}:   # committed shards + half of the next one on disk
                self._file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        feature_cache.CacheWriter.add_rows = add_rows
        from pipeline.stage_config import ExtractConfig
        run_extract(ExtractConfig.from_dict(json.loads({json.dumps(json.dumps(config.to_dict()))})))
    """)


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(env, inprocess):
    tmp, clip = env
    config = _config(tmp, clip, "cache_killed", workers=2, batch_size=2, shard_size=4)
    proc = subprocess.Popen([sys.executable, "-c", _kill_script(config, kill_after_rows=6)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    finally:  # the killed driver's embedded Ray processes share its process group: end them by that id
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    folder = open_cache(tmp / "cache_killed").folder
    assert not list(folder.glob(".shard-*")), "the half shard is built in memory: nothing of it reaches the disk"
    visible = open_cache(tmp / "cache_killed")
    assert 0 < len(visible) < 7 and len(visible) % 4 == 0  # whole shards only
    rerun = run_extract(_config(tmp, clip, "cache_killed"))
    assert rerun.computed == 7 - len(visible) and rerun.reused == len(visible)
    assert not list(folder.glob(".shard-*.tmp-*"))
    _assert_same(_dump_cache(open_cache(tmp / "cache_killed")), _dump_cache(inprocess[1]))


@pytest.mark.slow
def test_embedded_ray_run_equals_inprocess(env, inprocess):
    tmp, clip = env
    summary = run_extract(_config(tmp, clip, "cache_ray", workers=2))
    assert summary.ray_address == "embedded" and summary.computed == 7 and summary.deduplicated == 3
    _assert_same(_dump_cache(open_cache(tmp / "cache_ray")), _dump_cache(inprocess[1]))


@pytest.mark.slow
def test_real_ray_head_on_loopback(env, inprocess):
    """`ray start --head` (its own temp dir, stopped by its session: other users' Ray is never touched)."""
    tmp, clip = env
    with ray_head() as address:
        time.sleep(2)
        summary = run_extract(_config(tmp, clip, "cache_head", workers=2, ray_address=address))
        assert summary.ray_address == address and summary.computed == 7
    _assert_same(_dump_cache(open_cache(tmp / "cache_head")), _dump_cache(inprocess[1]))
