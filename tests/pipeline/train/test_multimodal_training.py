"""Training from the feature cache vs online CLIP (issue 5): same first-batch loss, mismatched caches exit 2.

A tiny sample (make-sample with small sizes), a tiny CLIP saved with save_pretrained and the tiny BERT.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_tiny_clip
import torch

from exit_codes import UsageError
from pipeline.stage_config import stage_config
from pipeline.extract.stage import run_extract
from pipeline.io.sample import make_sample
from pipeline.train.trainer import Trainer, train


@pytest.fixture(scope="module")
def sample_with_cache(tmp_path_factory, tiny_bert_dir, tiny_clip_dir):
    root = tmp_path_factory.mktemp("mm")
    make_sample(root / "data", seed=0, sizes={"train": 24, "valid": 12, "test": 8})
    clip = tiny_clip_dir
    cfg = stage_config("extract", overrides=[f"data_dir={root / 'data'}", "dataset=twitter2015", f"vit_name={clip}",
                                             f"cache_dir={root / 'cache'}", "workers=0", "batch_size=16",
                                             "precision=fp32"])
    run_extract(cfg, dumps=[])
    return root, clip


def _train_cfg(root: Path, clip: Path, bert: str, **extra) -> dict:
    sets = {"data_dir": root / "data", "dataset": "twitter2015", "cache_dir": root / "cache", "vit_name": clip,
            "bert_name": bert, "save_path": root / "run", "device": "cpu", "max_seq": 48, "train_batch_size": 8,
            "num_epochs": 1, "him.hidden": 16, "him.num_capsules": 2, "him.heads": 2, "dropout": 0.0, "precision": "fp32"}
    sets.update(extra)
    return stage_config("train", overrides=[f"{k}={v}" for k, v in sets.items()])


def _unique_image_tweets(trainer: Trainer, dataset_dir: Path) -> list[int]:
    """Indices of training tweets whose image bytes no other tweet shares (a shared image keeps one crop set)."""
    import hashlib
    from collections import Counter

    def digest(image_id: str) -> str:
        path = dataset_dir / "twitter2015_images" / f"{image_id}.jpg"
        return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else image_id

    hashes = [digest(t.image_id) for t in trainer.train_set]
    counts = Counter(hashes)
    return [i for i, h in enumerate(hashes) if counts[h] == 1][:8]


def _first_batch_loss(trainer: Trainer, idx: list[int]) -> float:
    text = trainer.window_tokenizer.collate([trainer.encoded[i][0] for i in idx], [trainer.encoded[i][1] for i in idx])
    visual = trainer.features.batch([trainer.train_set[i] for i in idx], trainer.model_config, trainer.device)
    assert visual is not None and bool(visual.orig_mask.any())
    trainer.model.eval()
    with torch.no_grad():
        return trainer.model(text, visual).loss.item()


def test_cached_and_online_give_the_same_first_batch_loss(sample_with_cache, tiny_bert_dir):
    root, clip = sample_with_cache
    cached = Trainer(_train_cfg(root, clip, tiny_bert_dir, features="cached"))
    online = Trainer(_train_cfg(root, clip, tiny_bert_dir, features="online"))
    assert cached.model_config.visual == online.model_config.visual  # same layout and encoder fingerprint
    online.model.load_state_dict(cached.model.state_dict())
    idx = _unique_image_tweets(cached, root / "data" / "twitter2015")
    assert len(idx) == 8
    assert _first_batch_loss(cached, idx) == pytest.approx(_first_batch_loss(online, idx), rel=1e-5)


def test_training_is_deterministic_by_seed(sample_with_cache, tiny_bert_dir):
    root, clip = sample_with_cache
    a = train(_train_cfg(root, clip, tiny_bert_dir, save_path=root / "a", num_epochs=2))
    b = train(_train_cfg(root, clip, tiny_bert_dir, save_path=root / "b", num_epochs=2))
    assert a["best_dev"] == b["best_dev"]
    sa = (root / "a" / "best" / "model.safetensors").read_bytes()
    assert sa == (root / "b" / "best" / "model.safetensors").read_bytes()


def test_cache_of_another_encoder_is_a_usage_error(sample_with_cache, tiny_bert_dir, tmp_path):
    root, _ = sample_with_cache
    other = make_tiny_clip(tmp_path / "other_clip", seed=5)
    with pytest.raises(UsageError) as info:
        Trainer(_train_cfg(root, other, tiny_bert_dir))
    message = str(info.value)
    assert info.value.exit_code == 2
    cached_id = next(p.name for p in (root / "cache").iterdir() if p.is_dir())
    assert cached_id in message


def test_evaluate_multimodal_checkpoint_without_its_cache_exits_2(sample_with_cache, tiny_bert_dir, tmp_path):
    from pipeline.train.evaluate import evaluate_file

    root, clip = sample_with_cache
    train(_train_cfg(root, clip, tiny_bert_dir, save_path=tmp_path / "run"))
    best, split = tmp_path / "run" / "best", root / "data" / "twitter2015" / "test.txt"
    empty = tmp_path / "empty"
    empty.mkdir()

    def cfg(cache, *extra):
        return stage_config("evaluate", overrides=[f"cache_dir={cache}", "device=cpu", "precision=fp32", *extra])

    with pytest.raises(UsageError) as info:
        evaluate_file(best, split, cfg(empty))
    assert info.value.exit_code == 2 and "extract-features" in str(info.value) and str(empty) in str(info.value)
    assert f"--model {best}" in str(info.value) and "dataset=twitter2015" in str(info.value)
    # config.json records the folder encoder by name and weights hash, never its machine path
    saved = (best / "config.json").read_text()
    record = json.loads(saved)["rpihmif"]["visual"]["encoder"]
    assert record["source"] == "folder" and record["vit_name"] == Path(clip).name and len(record["weights_sha256"]) == 64
    assert str(clip) not in saved
    from pipeline.extract.from_checkpoint import vision_overrides
    assert f"vision.vit_name={Path(clip).resolve()}" in vision_overrides(best)  # where train found it, still there
    assert "CLIPVisionModel from a local folder" in (best / "README.md").read_text()
    with_cache = evaluate_file(best, split, cfg(root / "cache"))
    assert with_cache["images_used"] >= 6 and with_cache["images_used"] + with_cache["images_missing"] == 8
    text_only = evaluate_file(best, split, cfg(empty, "allow_missing_images=true"))
    assert (text_only["images_used"], text_only["images_missing"]) == (0, 8)
