"""Data: Kaldi data dirs, audio, features, tokenizers and corpus preparation."""
