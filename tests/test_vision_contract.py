"""One vision contract: the encoder folder's own CLIPImageProcessor decides the pixels (size, crop, resample)."""
from __future__ import annotations

import numpy as np
import torch
from _vision_helpers import draw_image, make_tiny_clip

from pipeline.extract.clip_encoder import Preprocessor, _image_processor_class
from pipeline.extract.featurizer import ClipFeaturizer, featurize_images, resolve_fingerprint


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
