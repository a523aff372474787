"""Decoding: batched beam search and greedy search over the attention decoder."""

from kdst.decode.search import Hypothesis, SearchOptions, beam_search, greedy_search

__all__ = ["Hypothesis", "SearchOptions", "beam_search", "greedy_search"]
