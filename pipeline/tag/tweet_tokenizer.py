"""The tweet tokenizer of tag-corpus, under its old import path: the code is model code and lives in
`rpihmif.tweet_tokenizer` (the notebook API tokenizes raw text exactly as tag-corpus does)."""
from rpihmif.tweet_tokenizer import Token, token_texts, tokenize

__all__ = ["Token", "tokenize", "token_texts"]
