"""The fingerprint's faster paths give exactly what the plain ones gave: stored fingerprints stay valid."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from mailbridge.domain import fingerprint as fp

# Letters that case-insensitive matching relates to the ASCII letters of the URL prefixes, and more.
_TRICKY = "httpsmailtowwHTTPSMAILTOWWſıİKKµ:/. \u00df\u0130\u0131\u017f\u212a"


@settings(max_examples=400, derandomize=True, deadline=None)
@given(st.text(alphabet=st.sampled_from(_TRICKY) | st.characters(), max_size=60))
def test_url_pattern_on_folded_text_matches_the_caseless_one(text: str) -> None:
    import unicodedata

    folded = unicodedata.normalize("NFKC", text).casefold()
    assert fp._URL.sub(" ", folded) == fp._URL_CASELESS.sub(" ", folded)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.binary(max_size=80), st.text(max_size=40))
def test_copied_keyed_state_equals_a_freshly_keyed_hash(key: bytes, joined: str) -> None:
    fresh = hashlib.blake2b(joined.encode("utf-8"), digest_size=4, key=key[:64]).digest()
    assert fp._hasher(key)(joined) == fp._hash(key, joined) == int.from_bytes(fresh, "big")


def test_known_spellings_of_links_are_removed() -> None:
    assert fp.words("See HTTPS://Example.org/x and MAILTO:a@b.c or Www.Site.test now") == [
        "see",
        "and",
        "or",
        "now",
    ]
