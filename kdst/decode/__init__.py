"""Decoding: batched beam search and greedy search over the attention decoder, and the transducer's
greedy and modified beam search (kdst.decode.transducer_search)."""

from kdst.decode.search import Hypothesis, SearchOptions, beam_search, greedy_search
from kdst.decode.transducer_search import greedy_search as transducer_greedy_search
from kdst.decode.transducer_search import modified_beam_search

__all__ = ["Hypothesis", "SearchOptions", "beam_search", "greedy_search", "modified_beam_search",
           "transducer_greedy_search"]
