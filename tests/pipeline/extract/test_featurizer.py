"""One vision contract: the encoder folder's own CLIPImageProcessor decides the pixels (size, crop, resample), and
the vision section's max_crops is stored and trained on benchmark data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import draw_image, make_dataset, make_tiny_clip

from rpihmif.vision_encoder import Preprocessor, _image_processor_class
from cache import resolve_fingerprint
from pipeline.extract.featurizer import ClipFeaturizer, featurize_images


def test_folder_preprocessor_config_is_honoured(tmp_path):
    from PIL import Image
    from transformers import CLIPVisionModel

    clip = make_tiny_clip(tmp_path / "clip")
    # not OpenAI's: resize to 256 then crop 224, bilinear, other mean/std
    proc = _image_processor_class()(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=2,
                                    image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    proc.save_pretrained(str(clip))
    draw_image(tmp_path / "img" / "a.png", seed=3, size=(300, 200))
    feat = ClipFeaturizer({"vit_name": str(clip)}, precision="fp32")
    out = featurize_images(feat, "img/a.png", [], [], tmp_path)
    model = CLIPVisionModel.from_pretrained(str(clip)).eval()
    direct_proc = type(proc).from_pretrained(str(clip))
    pixels = direct_proc(images=Image.open(tmp_path / "img" / "a.png").convert("RGB"), return_tensors="pt")
    with torch.inference_mode():
        direct = model(**pixels).last_hidden_state[0].numpy()
    np.testing.assert_allclose(out["orig"].astype(np.float32), direct, atol=5e-3, rtol=5e-3)
    # the OpenAI defaults give other pixels, and another fingerprint
    openai = Preprocessor()(Image.open(tmp_path / "img" / "a.png").convert("RGB"), 224)
    assert not torch.allclose(openai, pixels["pixel_values"][0], atol=1e-2)
    assert feat.fingerprint["hashed"]["preprocess"]["resample"] == 2
    assert feat.fingerprint["id"] == resolve_fingerprint(feat.settings, tmp_path / "cache")["id"]


def test_crop_sizes_keep_the_folder_ratio(tmp_path):
    proc = _image_processor_class()(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224})
    pre = Preprocessor(proc)
    assert pre.sized(112).size == {"shortest_edge": 128} and pre.sized(112).crop_size == {"height": 112, "width": 112}
    img = __import__("PIL.Image").Image.new("RGB", (90, 60), (10, 200, 30))
    assert tuple(pre(img, 64).shape) == (3, 64, 64)


@pytest.mark.slow
def test_max_crops_5_on_benchmark_data_is_stored_and_trained(tmp_path, tiny_bert_dir):
    from pipeline.extract.stage import run_extract
    from pipeline.stage_config import stage_config
    from pipeline.train.trainer import Trainer
    from exit_codes import UsageError

    clip = make_tiny_clip(tmp_path / "clip")
    root = make_dataset(tmp_path / "data", n_images=2)
    crops = root / "twitter2015_aux_images" / "train" / "crops"
    names = [f"100_extra_{c}.png" for c in range(7)]
    rnames = [f"twitter15_detect/crops/100_extra_{c}.jpg" for c in range(6)]
    for c, name in enumerate(names):
        draw_image(crops / name, seed=300 + c, size=(40, 50), fmt="PNG")
    for c, name in enumerate(rnames):
        draw_image(root / name, seed=400 + c, size=(30, 30), fmt="JPEG")
    torch.save({"100.jpg": names, "101.jpg": []}, root / "twitter2015_train_dict.pth")
    torch.save({"100": rnames, "101": []}, root / "twitter15_detect" / "twitter15_img2crop.pth")
    (root / "valid.txt").write_text((root / "train.txt").read_text())
    common = [f"data_dir={tmp_path / 'data'}", "dataset=twitter2015", f"cache_dir={tmp_path / 'cache'}",
              f"vit_name={clip}", "precision=fp32"]  # flat DeepKE names reach the vision section
    run_extract(stage_config("extract", overrides=common + ["workers=0", "splits=train", "max_crops=5"]))
    from cache.reader import open_cache

    cache = open_cache(tmp_path / "cache")
    f = cache.get(cache.key_for("twitter2015", "100.jpg"))
    assert f["grounding"].shape[0] == 5 and f["grounding_mask"].tolist() == [True] * 5
    assert f["rcnn"].shape[0] == 5 and f["rcnn_mask"].tolist() == [True] * 5
    train = [f"bert_name={tiny_bert_dir}", f"save_path={tmp_path / 'run'}", "device=cpu", "max_seq=48",
             "him.hidden=16", "him.num_capsules=2", "him.heads=2", "num_epochs=1"]
    trainer = Trainer(stage_config("train", overrides=common + train + ["vision.max_crops=5"]))
    assert trainer.model_config.visual.max_crops == 5
    tweet = next(i for i, t in enumerate(trainer.train_set) if t.image_id == "100.jpg" or t.image_id == "100")
    visual = trainer.features.batch([trainer.train_set[tweet]], trainer.model_config, trainer.device)
    assert visual.grounding_mask[0].tolist() == [True] * 5 and visual.rcnn_mask[0].tolist() == [True] * 5
    assert trainer.fit()["best_epoch"] == 1
    with pytest.raises(UsageError, match="no features of encoder"):  # max_crops 3 names another cache
        Trainer(stage_config("train", overrides=common + train))
