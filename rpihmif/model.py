"""RPIHMIF: text encoder (+ casing input) -> word features (first sub-token + shape, chars, dataset style; BiLSTM)
-> HIM -> IFFE -> emissions -> CRF. Switches: text_only, him.question, iffe.iterations, visual.sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from rpihmif.alignment import NUM_SHAPES, TextBatch
from rpihmif.chars import CharCNN
from rpihmif.checkpoint_check import (
    TOKENIZER_FILES,
    build_failure,
    check_shapes,
    check_weights_header,
    refuse,
)
from rpihmif.checkpoint_config import CONFIG, WEIGHTS, read_checkpoint_config
from rpihmif.config import ModelConfig, RPIHMIFConfig
from rpihmif.crf_head import CRFHead
from rpihmif.errors import ModelError, bounded
from rpihmif.fusion import IFFE
from rpihmif.him import HIM
from rpihmif.text_encoder import load_text_encoder
from rpihmif.visual import VisualBatch

__all__ = ["RPIHMIFOutput", "RPIHMIF", "build_model", "encoder_config", "checked_config", "load_model_folder"]


def encoder_config(data: dict):
    """The text encoder's PreTrainedConfig from its saved dict (which names its `model_type`)."""
    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ValueError("the encoder config has no model_type")
    return AutoConfig.for_model(model_type, **data)


@dataclass
class RPIHMIFOutput:
    """Forward result; visual fields are None for text-only models or when no visual batch was given."""

    loss: torch.Tensor | None  # () mean CRF negative log-likelihood, when text.labels is given
    emissions: torch.Tensor  # (B, W, L)
    word_mask: torch.Tensor  # (B, W) bool
    routing: torch.Tensor | None = None  # (B, W, 3) coupling mass per source (orig, grounding, rcnn); 0 rows = no image
    gate: torch.Tensor | None = None  # (B,) text-image relevance gate, 0 where no image
    coupling: torch.Tensor | None = None  # (B, W, C) final IFFE coupling coefficients
    present: torch.Tensor | None = None  # (B,) bool: the row had visual tokens of a used source


class RPIHMIF(PreTrainedModel):
    """The full tagger over a `transformers` encoder: `RPIHMIF(ModelConfig, encoder)` for a fresh model,
    `RPIHMIF.from_pretrained(folder)` / `save_pretrained(folder)` for checkpoints (`rpihmif.checkpoint`)."""

    config_class = RPIHMIFConfig
    base_model_prefix = "rpihmif"
    main_input_name = "text"

    def __init__(self, config: RPIHMIFConfig | ModelConfig, encoder: nn.Module | None = None):
        if isinstance(config, ModelConfig):
            if encoder is None:
                raise ValueError("RPIHMIF(ModelConfig, encoder): the encoder is required with a ModelConfig")
            config = RPIHMIFConfig.from_parts(config, encoder.config)
        super().__init__(config)
        self.model_config = mc = config.model_config()
        if encoder is None:  # from_pretrained: rebuild the encoder from its saved config, weights come after
            encoder = AutoModel.from_config(encoder_config(config.encoder), trust_remote_code=False)
        self.encoder = encoder
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused: word features come from last_hidden_state
        enc_cfg = encoder.config
        encoder_dim = enc_cfg.hidden_size
        self.use_token_types = getattr(enc_cfg, "type_vocab_size", 0) > 1
        max_pos = getattr(enc_cfg, "max_position_embeddings", None)
        if max_pos is not None and mc.text.max_seq > max_pos:
            raise ValueError(f"text.max_seq {mc.text.max_seq} > encoder max_position_embeddings {max_pos}")
        tc = mc.text
        self.shape = nn.Embedding(NUM_SHAPES, tc.shape_dim, padding_idx=0) if tc.word_shape else None
        if tc.char_dim and tc.char_max_bytes < 1:
            raise ValueError(f"text.char_max_bytes must be >= 1 with text.char_dim {tc.char_dim}, "
                             f"got {tc.char_max_bytes}")
        self.chars = CharCNN(tc.char_dim, tc.char_emb_dim, dropout=tc.dropout) if tc.char_dim else None
        # zero-initialised: the encoder starts exactly as pretrained and learns what casing adds
        self.case_input = nn.Embedding.from_pretrained(torch.zeros(NUM_SHAPES, encoder_dim), freeze=False,
                                                       padding_idx=0) if tc.case_input else None
        if tc.dataset_dim and (tc.dataset not in tc.datasets or len(set(tc.datasets)) != len(tc.datasets)
                               or not all(isinstance(n, str) and n for n in tc.datasets)):
            raise ValueError(f"text.dataset {tc.dataset!r} is not one of text.datasets {tc.datasets} "
                             "(distinct dataset names)")
        self.dataset_style = nn.Embedding(len(tc.datasets), tc.dataset_dim) if tc.dataset_dim else None
        text_dim = encoder_dim + (tc.shape_dim if tc.word_shape else 0) + tc.char_dim + tc.dataset_dim
        self.context = nn.LSTM(text_dim, tc.lstm_dim, batch_first=True, bidirectional=True) if tc.lstm_dim else None
        text_dim = 2 * tc.lstm_dim if tc.lstm_dim else text_dim
        # text-path layers are built first so that, under one seed, a model without images starts (and trains)
        # exactly like the text-only model: the visual layers draw their initialisation afterwards
        self.dropout = nn.Dropout(tc.dropout)
        self.emission = nn.Linear(text_dim, len(mc.labels))
        self.crf = CRFHead(len(mc.labels), constrain_bio=mc.labels if mc.constrain_bio else None)
        self.him = HIM(mc.him, mc.visual, text_dim, encoder_dim, mc.text_only)
        self.iffe = None if mc.text_only else IFFE(mc.iffe, text_dim, mc.him.hidden)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Layers initialise themselves when built; loading fills every weight (strict), so nothing to do here."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "RPIHMIF":
        """A local checkpoint folder (this or the old format) loads strictly with errors naming the file
        (`rpihmif.errors.ModelError`); anything else goes to transformers' loader."""
        if not Path(pretrained_model_name_or_path).is_dir():
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = cls._load_folder(Path(pretrained_model_name_or_path))
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        return model.to(dtype) if isinstance(dtype, torch.dtype) else model

    @classmethod
    def _load_folder(cls, folder: Path) -> "RPIHMIF":
        """From a local checkpoint folder (both formats), strict and checked (`load_model_folder`)."""
        return load_model_folder(folder)

    def forward(self, text: TextBatch, visual: VisualBatch | None = None) -> RPIHMIFOutput:
        """text: TextBatch (B, T)/(B, W); visual: VisualBatch of the same B or None (= text path)."""
        if visual is not None and visual.orig.size(0) != text.input_ids.size(0):
            raise ValueError(f"visual batch has {visual.orig.size(0)} rows, text batch {text.input_ids.size(0)}")
        states, words = self._word_features(text)
        him = self.him(states, text.question_mask, words, text.word_mask, visual)
        features, fused = him.text, None
        if self.iffe is not None and him.capsules is not None:
            fused = self.iffe(him.text, him.capsules, him.source_mass, him.gate, him.present)
            features = fused.features
        # shape: (B, W, L)
        emissions = self.emission(self.dropout(features))
        loss = self.crf.loss(emissions, text.labels, text.word_mask) if text.labels is not None else None  # fp32
        out = RPIHMIFOutput(loss=loss, emissions=emissions, word_mask=text.word_mask)
        if fused is not None:
            out.routing, out.coupling, out.gate, out.present = fused.routing, fused.coupling, him.gate, him.present
        return out

    def _word_features(self, text: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (B, T, Ht) and word features (B, W, D): first sub-token (+ shape, + chars, + BiLSTM)."""
        types = text.token_type_ids if self.use_token_types else torch.zeros_like(text.token_type_ids)
        inputs = {"input_ids": text.input_ids}
        if self.case_input is not None:
            # shape: (B, T): each word's shape id at its first sub-token, 0 (no embedding) elsewhere
            case_ids = torch.zeros_like(text.input_ids).scatter_(1, text.word_index, text.shape_ids * text.word_mask)
            # shape: (B, T, Ht)
            inputs = {"inputs_embeds": self.encoder.get_input_embeddings()(text.input_ids) + self.case_input(case_ids)}
        # shape: (B, T, Ht)
        states = self.encoder(**inputs, attention_mask=text.attention_mask, token_type_ids=types).last_hidden_state
        # shape: (B, W, Ht): first sub-token of each word
        index = text.word_index.unsqueeze(-1).expand(-1, -1, states.size(-1))
        words = torch.gather(states, 1, index)
        if self.shape is not None:
            # shape: (B, W, Ht + S)
            words = torch.cat([words, self.shape(text.shape_ids)], dim=-1)
        if self.chars is not None:
            if text.char_ids is None or text.char_ids.shape[:2] != text.word_mask.shape:
                got = None if text.char_ids is None else tuple(text.char_ids.shape)
                raise ValueError(f"text.char_dim {self.chars.char_dim} needs char ids (B, W, C) matching word_mask "
                                 f"{tuple(text.word_mask.shape)}, got {got}; build batches with WindowTokenizer.for_model")
            # shape: (B, W, Ht + S + char_dim)
            words = torch.cat([words, self.chars(text.char_ids).to(words.dtype)], dim=-1)
        if self.dataset_style is not None:
            ids = text.dataset_ids if text.dataset_ids is not None else self.dataset_ids([""] * words.size(0))
            # shape: (B, W, ... + dataset_dim): the row's annotation style beside every word
            style = self.dataset_style(ids.to(words.device))[:, None, :].expand(-1, words.size(1), -1)
            words = torch.cat([words, style.to(words.dtype)], dim=-1)
        if self.context is not None:
            # shape: (B, W, 2 * lstm_dim); fp32: the LSTM has no bf16 CPU kernel, padding is packed away
            lengths = text.word_mask.sum(1).clamp(min=1).cpu()
            packed = nn.utils.rnn.pack_padded_sequence(words.float(), lengths, batch_first=True, enforce_sorted=False)
            with torch.autocast(words.device.type, enabled=False):
                out, _ = self.context(packed)
            words = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=words.size(1))[0]
        return states, words

    def dataset_ids(self, names: list[str]) -> torch.Tensor | None:
        """(B,) style index of each dataset name ("" = the model's own dataset); None when the model has no styles."""
        tc = self.model_config.text
        if self.dataset_style is None:
            return None
        unknown = sorted({n for n in names if n and n not in tc.datasets})
        if unknown:
            raise ValueError(f"dataset {unknown[0]!r}: the model knows the annotation styles of {tc.datasets}")
        return torch.tensor([tc.datasets.index(n or tc.dataset) for n in names], dtype=torch.long)

    def decode(self, output: RPIHMIFOutput) -> list[list[int]]:
        """Viterbi tag ids per row (length = the row's words)."""
        return self.crf.decode(output.emissions, output.word_mask)

    def marginals(self, output: RPIHMIFOutput) -> torch.Tensor:
        """CRF marginal probabilities (B, W, L), zero on padding."""
        return self.crf.marginals(output.emissions, output.word_mask)

    def param_groups(self, lr_text: float, lr_fusion: float, lr_crf: float, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: encoder and case input / fusion (shape, chars, BiLSTM, HIM, IFFE, emissions) / CRF; no decay on biases,
        norms and the CRF transitions. Empty groups are left out."""
        no_decay: set[int] = set()
        for module in self.modules():
            if isinstance(module, nn.LayerNorm) or "LayerNorm" in type(module).__name__:
                no_decay.update(id(p) for p in module.parameters(recurse=False))
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                no_decay.add(id(p))
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "text" if name.startswith(("encoder.", "case_input.")) else "crf" if name.startswith("crf.") else "fusion"
            decay = part != "crf" and id(p) not in no_decay
            groups.setdefault((part, decay), []).append(p)
        lrs = {"text": lr_text, "fusion": lr_fusion, "crf": lr_crf}
        return [{"params": ps, "lr": lrs[part], "weight_decay": weight_decay if decay else 0.0, "name": f"{part}" + ("" if decay else "_no_decay")}
                for (part, decay), ps in sorted(groups.items())]


def build_model(config: ModelConfig):
    """Fresh `(RPIHMIF, tokenizer)` with the pretrained encoder from config.text.bert_name ("" = packaged MiniLM).

    Seed torch before calling: the HIM/IFFE/emission initialisation draws from the torch RNG.
    """
    encoder, tokenizer = load_text_encoder(config.text.bert_name)
    return RPIHMIF(config, encoder), tokenizer


# ---------------------------------------------------------------------------------------------------------------
# the checked folder loader (rpihmif.checkpoint.open_checkpoint adds the tokenizer)
# ---------------------------------------------------------------------------------------------------------------
def checked_config(folder: Path, expected_labels: list[str] | None = None) -> tuple[ModelConfig, dict]:
    """The configs of a checkpoint folder whose weights header and tokenizer files fit them (nothing loaded)."""
    config, encoder = read_checkpoint_config(folder)
    if expected_labels is not None and list(expected_labels) != list(config.labels):
        raise ModelError(f"{folder}: checkpoint labels {bounded(config.labels)} are not the expected label set "
                         f"{list(expected_labels)}; retrain it with this pipeline's labels")
    tensors = check_weights_header(folder / WEIGHTS)
    check_shapes(folder, _build_model(folder, config, encoder, meta=True), tensors)
    missing = [n for n in TOKENIZER_FILES if not (folder / n).is_file()]
    if missing:
        raise refuse(folder, f"tokenizer files missing ({', '.join(missing)})")
    return config, encoder


def _build_model(folder: Path, config: ModelConfig, encoder: dict, meta: bool = False) -> "RPIHMIF":
    """The RPIHMIF the config describes (on the meta device: shapes only, no memory); ModelError naming config.json."""
    try:
        if meta:
            with torch.device("meta"):
                return RPIHMIF(RPIHMIFConfig.from_parts(config, encoder))
        return RPIHMIF(RPIHMIFConfig.from_parts(config, encoder))
    except Exception as exc:  # noqa: BLE001 -- whatever a hostile config makes transformers or torch raise
        raise build_failure(folder / CONFIG, exc) from exc


def load_model_folder(folder: str | Path, expected_labels: list[str] | None = None) -> "RPIHMIF":
    """The checked RPIHMIF of a checkpoint folder, weights loaded strictly, in eval mode on the CPU."""
    from safetensors.torch import load_model

    folder = Path(folder)
    config, encoder = checked_config(folder, expected_labels)
    model = _build_model(folder, config, encoder)
    try:  # safetensors directly: strict, and the same for both formats
        load_model(model, str(folder / WEIGHTS), strict=True)
    except Exception as exc:  # noqa: BLE001 -- SafetensorError, a file changed since the header check
        raise refuse(folder / WEIGHTS, f"unreadable weights ({type(exc).__name__}: {bounded(exc)})") from exc
    return model.eval()
