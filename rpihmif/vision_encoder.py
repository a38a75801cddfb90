"""The frozen CLIP vision encoder: loading (folder, hub id or seeded random init), its CLIPImageProcessor, forward at any size.

`encoder_fingerprint` names an encoder + sizes + dtype so that features of two encoders never mix in one cache;
`vision_record` is what a checkpoint's config.json says about that encoder (never a machine path).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from rpihmif.hub import load_pretrained, local_folder
from rpihmif.visual import VisualLayout

__all__ = [
    "VisionSettings", "Preprocessor", "load_vision_encoder", "random_vit_config",
    "encode", "weights_sha256", "encoder_fingerprint", "fingerprint_id", "visual_spec",
    "VISION_SOURCES", "vision_record", "settings_from_record",
]

log = logging.getLogger("rpihmif.vision_encoder")

FINGERPRINT_VERSION = 2  # bump when the meaning of stored features changes (2: the encoder's own CLIPImageProcessor)


@dataclass
class VisionSettings:
    """What decides the features: encoder source, input sizes and stored dtype; the `vision:` section of
    conf/extract.yaml and conf/train.yaml (the stages check its ranges) and of a checkpoint's vision record."""

    vit_name: str = ""  # CLIPVisionModel hub id or folder; "" = seeded random-init ViT-B/32-shaped encoder
    random_vit_layers: int = 12  # layers of the random-init encoder
    random_vit_hidden: int = 768  # hidden size of the random-init encoder (heads = hidden / 64, at least 1)
    seed: int = 0  # seeds the random-init encoder
    image_size: int = 224  # originals: the CLIPImageProcessor, cropped to this
    aux_size: int = 128  # grounding crops
    rcnn_size: int = 64  # RCNN crops
    max_crops: int = 3  # crops of each kind
    dtype: str = "float16"  # stored feature dtype: float16 | float32


def random_vit_config(layers: int = 12, hidden: int = 768, image_size: int = 224, patch_size: int = 32) -> CLIPVisionConfig:
    """A ViT-B/32-shaped CLIPVisionConfig (12 layers, 768 hidden, 12 heads, MLP 4x) with `layers`/`hidden` changed."""
    if layers < 1 or hidden < 1:
        raise ValueError(f"expected layers >= 1 and hidden >= 1, got {layers}, {hidden}")
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return CLIPVisionConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=image_size, patch_size=patch_size,
                            hidden_act="quick_gelu", projection_dim=512)


def load_vision_encoder(settings: VisionSettings, offline: bool = False) -> CLIPVisionModel:
    """Load the frozen encoder in eval mode: from `settings.vit_name` (a folder or a Hugging Face Hub id such as
    openai/clip-vit-base-patch32; cached copies load offline), or seeded random init when it is ""."""
    if settings.vit_name:
        model = load_pretrained(CLIPVisionModel, settings.vit_name, "vit_name", offline)
    else:
        config = random_vit_config(settings.random_vit_layers, settings.random_vit_hidden, settings.image_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            model = CLIPVisionModel(config)
        log.warning("vision encoder: RANDOM-INIT ViT-B/32-shaped CLIP (%d layers, hidden %d, seed %d) -- no vit_name "
                    "given; features are random projections without pretrained semantics. Pass --set vit_name=<CLIP folder> for real CLIP features.",
                    settings.random_vit_layers, settings.random_vit_hidden, settings.seed)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _image_processor_class():
    """CLIPImageProcessor; its PIL backend where transformers has one (no torchvision needed, same pixels)."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


class Preprocessor:
    """The encoder's own `CLIPImageProcessor` (resize, crop, resample, rescale, mean/std from the folder's
    preprocessor_config.json; OpenAI CLIP's defaults for the random-init encoder), applied at any input size: the
    crop is `size` px and the resize keeps the folder's resize/crop ratio."""

    def __init__(self, processor: Any = None):
        self.processor = processor if processor is not None else _image_processor_class()()
        self._sized: dict[int, Any] = {}

    @classmethod
    def for_encoder(cls, vit_name: str, offline: bool = False) -> "Preprocessor":
        """The image processor saved with `vit_name` (folder or hub id), else OpenAI CLIP's defaults."""
        folder = local_folder(vit_name) if vit_name else None
        if vit_name and (folder is None or (folder / "preprocessor_config.json").is_file()):
            return cls(load_pretrained(_image_processor_class(), vit_name, "vit_name", offline))
        return cls()

    def info(self) -> dict[str, Any]:
        """What decides the pixels (hashed into the encoder fingerprint)."""
        d = self.processor.to_dict()
        keys = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb")
        return json.loads(json.dumps({k: d.get(k) for k in keys}, default=int))

    def sized(self, size: int) -> Any:
        """The processor with its crop at `size` px and its resize scaled alike (cached per size)."""
        if size not in self._sized:
            proc = self.processor
            crop = (proc.crop_size or {}).get("height") or size
            edge = (proc.size or {}).get("shortest_edge", crop)
            self._sized[size] = _image_processor_class()(**{
                **proc.to_dict(), "size": {"shortest_edge": max(size, round(size * edge / crop))},
                "crop_size": {"height": size, "width": size}})
        return self._sized[size]

    def __call__(self, image: Image.Image, size: int) -> torch.Tensor:
        """RGB PIL image -> float32 tensor (3, size, size)."""
        if image.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {image.mode}")
        # shape: (1, 3, size, size)
        pixels = self.sized(size)(images=image, return_tensors="pt")["pixel_values"]
        return pixels[0].float()


def encode(model: CLIPVisionModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """pixel_values (B, 3, S, S) -> last_hidden_state (B, 1 + (S/patch)^2, Dv), position embeddings interpolated
    when S differs from the model's image size. Call under torch.inference_mode()."""
    if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"expected pixel_values (B, 3, S, S), got {tuple(pixel_values.shape)}")
    size = model.config.image_size
    interpolate = pixel_values.shape[-1] != size or pixel_values.shape[-2] != size
    return model(pixel_values=pixel_values, interpolate_pos_encoding=interpolate).last_hidden_state


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over parameter and buffer names, shapes, dtypes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _tokens(size: int, patch: int) -> int:
    return (size // patch) ** 2 + 1


def visual_spec(model_config: CLIPVisionConfig, settings: VisionSettings) -> VisualLayout:
    """Token layout of the features this encoder + sizes produce."""
    p = model_config.patch_size
    for name in ("image_size", "aux_size", "rcnn_size"):
        if getattr(settings, name) < p:
            raise ValueError(f"{name} {getattr(settings, name)} is smaller than the encoder's patch size {p}")
    return VisualLayout(dim=model_config.hidden_size, orig_tokens=_tokens(settings.image_size, p),
                      grounding_tokens=_tokens(settings.aux_size, p), rcnn_tokens=_tokens(settings.rcnn_size, p),
                      max_crops=settings.max_crops)


_CONFIG_KEYS_IGNORED = {"_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype",
                        "_attn_implementation", "_attn_implementation_autoset", "name_or_path", "output_attentions",
                        "output_hidden_states", "return_dict", "use_cache"}


def encoder_fingerprint(model: CLIPVisionModel, settings: VisionSettings, preprocessor: Preprocessor,
                        weights_hash: str | None = None) -> dict[str, Any]:
    """Everything that decides the stored features, as a JSON-able dict; `fingerprint_id` hashes it.

    `info` (not hashed) is the readable part: encoder kind ("random-init" or the folder it came from), spec.
    """
    cfg = {k: v for k, v in sorted(model.config.to_dict().items()) if k not in _CONFIG_KEYS_IGNORED}
    spec = visual_spec(model.config, settings)
    random_init = not settings.vit_name
    hashed = {
        "version": FINGERPRINT_VERSION,
        "model_config": cfg,
        "weights_sha256": weights_hash or weights_sha256(model),
        "random_init": random_init,
        "image_size": settings.image_size,
        "aux_size": settings.aux_size,
        "rcnn_size": settings.rcnn_size,
        "max_crops": settings.max_crops,
        "dtype": settings.dtype,
        "preprocess": preprocessor.info(),
    }
    info = {
        "encoder": (f"random-init ViT (seed {settings.seed}, {model.config.num_hidden_layers} layers, "
                    f"hidden {model.config.hidden_size})" if random_init else f"CLIPVisionModel from {settings.vit_name}"),
        "spec": spec.__dict__,
        "vision": vision_record(settings, hashed["weights_sha256"]),  # as a checkpoint records them (read by train)
    }
    return {"id": fingerprint_id(hashed), "hashed": hashed, "info": info}


def fingerprint_id(hashed: dict[str, Any]) -> str:
    """Short id (16 hex) of the hashed part of a fingerprint; prefixed "rand-" for random-init encoders."""
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    return f"rand-{digest}" if hashed.get("random_init") else digest


# ---------------------------------------------------------------------------------------------------------------
# the record of a checkpoint's vision encoder (config.json `visual.encoder`)
# ---------------------------------------------------------------------------------------------------------------
VISION_SOURCES = ("hub", "folder", "random-init")  # how `vit_name` is to be read back
_RECORD_INTS = ("random_vit_layers", "random_vit_hidden", "seed", "image_size", "aux_size", "rcnn_size", "max_crops")
_RECORD_STRS = ("vit_name", "source", "weights_sha256", "dtype")


def vision_record(settings: VisionSettings, weights_hash: str = "") -> dict[str, Any]:
    """The vision settings as config.json records them: a hub id as given, a local folder as its name (+ the weights'
    sha256 from the fingerprint, so a copy elsewhere is recognised), the random-init encoder as seed/layers/hidden."""
    name = settings.vit_name
    if not name:
        source = "random-init"
    elif name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().is_dir():
        source, name = "folder", Path(name).expanduser().resolve().name
    else:
        source = "hub"
    return {**dataclasses.asdict(settings), "vit_name": name, "source": source,
            "weights_sha256": weights_hash if source == "folder" else ""}


def settings_from_record(record: Any, vit_folder: str = "") -> VisionSettings:
    """VisionSettings of a checkpoint's `visual.encoder` record; a folder encoder needs `vit_folder` (where it is on
    this machine). ValueError naming the field for a record of the wrong shape."""
    if not isinstance(record, dict):
        raise ValueError(f"visual.encoder must be a mapping, got {type(record).__name__}")
    unknown = sorted(set(record) - set(_RECORD_INTS) - set(_RECORD_STRS))
    if unknown:
        raise ValueError(f"visual.encoder: unknown keys {unknown[:5]}")
    for key in _RECORD_INTS:
        value = record.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 20:
            raise ValueError(f"visual.encoder.{key} must be an integer in [0, 2^20), got {str(value)[:40]!r}")
    for key in _RECORD_STRS:
        if not isinstance(record.get(key, ""), str):
            raise ValueError(f"visual.encoder.{key} must be a string, got {str(record.get(key))[:40]!r}")
    if record.get("source") not in VISION_SOURCES:
        raise ValueError(f"visual.encoder.source must be one of {VISION_SOURCES}, got {str(record.get('source'))[:40]!r}")
    if record.get("dtype") not in ("float16", "float32"):
        raise ValueError(f"visual.encoder.dtype must be float16 or float32, got {str(record.get('dtype'))[:40]!r}")
    fields = {f.name for f in dataclasses.fields(VisionSettings)}
    values = {k: v for k, v in record.items() if k in fields}
    if record["source"] == "folder":
        values["vit_name"] = vit_folder
    elif record["source"] == "random-init":
        values["vit_name"] = ""
    return VisionSettings(**values)
