"""kdst.data.text_norm: a teacher's cased, punctuated text written as the recipes' references are."""

from __future__ import annotations

import pytest

from kdst.data.text_norm import normalize_text
from kdst.errors import KdstError


@pytest.mark.parametrize("text,upper", [
    (" Mr. Quilter is the apostle of the middle classes, and we're glad.",
     "MR QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES AND WE'RE GLAD"),
    ("Don\u2019t  stop -- it's 1990!", "DON'T STOP IT'S 1990"),  # a typographic apostrophe is one
    ("[MUSIC] Hello (laughs) there <NOISE> world.", "HELLO THERE WORLD"),  # annotations go
    ("'quoted' words' end", "QUOTED WORDS END"),  # apostrophes at word edges are quotes
    ("well-known \uff21\uff22", "WELL KNOWN AB"),  # NFKC: full-width letters
    ("caf\u00e9 na\u00efve", "CAF\u00c9 NA\u00cfVE"),  # letters with diacritics are letters
    ("", ""),
])
def test_upper_and_lower(text, upper):
    assert normalize_text(text, "upper") == upper
    assert normalize_text(text, "lower") == upper.lower()
    assert normalize_text(text, "none") == text


def test_unknown_normaliser_is_refused():
    with pytest.raises(KdstError, match="unknown text normaliser 'title'"):
        normalize_text("x", "title")
