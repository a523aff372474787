"""The synthetic corpora of the mini recipes: espeak-ng speech and templated En-De text."""
