"""The frozen CLIP vision encoder under its old import path: the code is model code and lives in
`rpihmif.vision_encoder` (the notebook API featurizes images in-process exactly as extract-features does)."""
from rpihmif.vision_encoder import (  # noqa: F401
    FINGERPRINT_VERSION,
    _image_processor_class,
    Preprocessor,
    VisionSettings,
    encode,
    encoder_fingerprint,
    fingerprint_id,
    load_vision_encoder,
    random_vit_config,
    visual_spec,
    weights_sha256,
)

__all__ = ["VisionSettings", "Preprocessor", "load_vision_encoder", "random_vit_config", "encode", "weights_sha256",
           "encoder_fingerprint", "fingerprint_id", "visual_spec"]
