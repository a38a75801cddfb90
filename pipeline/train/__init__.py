"""train and evaluate: the corpus, cached or online visual features, the training loop, scoring with seqeval."""
