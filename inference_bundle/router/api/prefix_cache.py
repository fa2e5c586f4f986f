"""Private prefix caches: whose prompts may share a server's cached blocks.

vLLM reuses the cached blocks of any earlier prompt that began the same way, so on a shared
server a user can tell from the time to the first token whether someone else's prompt began
with the same text. vLLM keeps apart requests that carry different ``cache_salt`` values; the
router sets one on every operation that takes it (``Operation.cache_salt``): a keyed hash of
the caller (or their group) and the model, under a secret of the router's, overwriting what
the client sent. The endpoint's ``cache_isolation`` says whose: ``user`` (the default),
``group``, or ``none`` (the client's own salt, if any, passes).
"""

from __future__ import annotations

import functools
import hashlib
import hmac


# The same few callers and models ask again and again: each salt is a keyed hash made once.
@functools.lru_cache(maxsize=4096)
def cache_salt(key: str, isolation: str, user: str, group: str, model: str) -> str | None:
    """The salt for a request, or None when the endpoint shares its cache with everyone."""
    if isolation == "none":
        return None
    scope = f"group\0{group}" if isolation == "group" and group else f"user\0{user}"
    return hmac.new(key.encode(), f"{scope}\0{model}".encode(), hashlib.sha256).hexdigest()
