"""Readers and writers of the pipeline's files: CoNLL splits, benchmark datasets, tweet dumps, images, safe paths."""
