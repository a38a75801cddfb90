"""RPI-HMIF: reading-preference-inspired multimodal NER (HIM + IFFE + CRF) as a pure PyTorch library.

No file I/O beyond checkpoints, no Ray: the batch stages live in `pipeline/`.
"""
