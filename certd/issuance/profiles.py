"""ACME profiles (draft-aaron-acme-profiles): a CA lists the certificate profiles it offers in
its directory's `meta.profiles` (name -> description); a newOrder may name one in `profile`.

certd's rule: the profile a certificate asks for (`certificates[].profile`, an alias's
`profile`, else `acme.profile`) is checked against the directory before any order. A CA that
lists profiles but not this one is a clear, permanent error (nothing is ordered); a CA that
lists none gets no `profile` field at all (it would ignore it, or refuse it as malformed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from certd.errors import AcmeError

# Let's Encrypt's are "classic", "tlsserver", "shortlived"; the draft allows any string:
# certd accepts a conservative token (it goes into logs, the store and JSON unescaped)
PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_LISTED = 64  # profiles of a directory taken into account (a hostile CA may list millions)
ERROR_TYPE = "certd:profile"


def check_name(value: str) -> str:
    """`value` if it is a usable profile name, else ValueError (for config and API)."""
    if not isinstance(value, str) or not PROFILE_RE.fullmatch(value):
        raise ValueError("must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return value


def offered(meta: Any) -> list[str]:
    """The profile names a directory's `meta` lists (empty: the CA has no profiles). Keys that
    are not usable names are skipped, never quoted."""
    profiles = (meta.get("profiles") if isinstance(meta, Mapping)
                else getattr(meta, "profiles", None))
    if not isinstance(profiles, Mapping):
        return []
    return [name for name in list(profiles)[:MAX_LISTED]
            if isinstance(name, str) and PROFILE_RE.fullmatch(name)]


def choose(wanted: str | None, available: list[str], *, certificate: str,
           directory: str) -> str | None:
    """The `profile` to send in newOrder: None when none is wanted or the CA lists none;
    AcmeError (certd:profile, permanent) when the CA lists profiles but not `wanted`."""
    if wanted is None or not available:
        return None
    if wanted not in available:
        raise AcmeError(f"acme[{certificate}]: profile {wanted!r} is not offered by "
                        f"{directory} (it offers: {', '.join(sorted(available))}); "
                        "nothing ordered", type=ERROR_TYPE)
    return wanted
