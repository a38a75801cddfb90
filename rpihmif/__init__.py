"""RPI-HMIF: reading-preference-inspired multimodal NER (HIM + IFFE + CRF) as a pure PyTorch library.

`rpihmif.load(model)(text)` tags a tweet. No Ray, no file I/O beyond checkpoints and the images given to a tagger: the
batch stages live in `pipeline/`. Importing it registers the checkpoint format ("rpihmif") with transformers' Auto*.
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from transformers import AutoConfig, AutoModel

from rpihmif.api import TweetTagger, load
from rpihmif.config import RPIHMIFConfig
from rpihmif.model import RPIHMIF

try:
    __version__ = version("rpihmif-pipeline")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0.0.0+source"

AutoConfig.register(RPIHMIFConfig.model_type, RPIHMIFConfig, exist_ok=True)
AutoModel.register(RPIHMIFConfig, RPIHMIF, exist_ok=True)

__all__ = ["load", "TweetTagger", "RPIHMIF", "RPIHMIFConfig", "__version__"]
