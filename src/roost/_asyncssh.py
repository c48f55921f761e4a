"""asyncssh, imported once without the warning that cryptography 51 and
later give for it: asyncssh names DSA's classes in its type hints, and
cryptography deprecates DSA. roost never makes nor accepts DSA keys, and the
warning would break every command's one-line error (and the tests, which
turn warnings into errors). Everything else asyncssh or cryptography warns
about is left as it is."""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"DSA", module=r"asyncssh\.")
    import asyncssh

__all__ = ["asyncssh"]
