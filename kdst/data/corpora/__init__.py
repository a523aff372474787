"""Corpus-specific preparation: real layouts (MuST-C) and the synthetic mini corpus."""
