"""How two email addresses are compared: the one normalisation the directory and sender recognition share.

An address is stored, made unique per practice and matched against a From header in this form only,
so "is this the same address?" has one answer everywhere (``directory.upsert_user``, the inbound
pipeline's sender recognition, the quarantine's release, suppressions).
"""

from __future__ import annotations


def normalise(address: str) -> str:
    """The comparison form of an address: surrounding spaces and angle brackets dropped, lower-cased.

    - The domain is case-insensitive (RFC 5321 §2.4, RFC 1035 §2.3.3).
    - The local part is compared case-insensitively too. RFC 5321 lets the receiving system treat it
      as case-sensitive, but the mailbox providers do not, and a From header carries whatever case the
      sender's program wrote: ``Alice@`` and ``alice@`` are one person to the mail system, so they
      are one address here.
    - Nothing else is folded: dots, ``+tags`` and quoted local parts are significant. Some providers
      ignore dots or tags; others deliver them to different people, and folding them would merge
      different people's addresses.
    """
    return address.strip().strip("<>").strip().lower()
