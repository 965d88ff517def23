"""The one way a Redis or PostgreSQL URL is shown in a log line, an error message or an HTTP answer."""

from __future__ import annotations

import re

MASK = "***"
# Query parameters redis-py, asyncpg and libpq read a secret from (`?password=…`, `sslpassword=…`, …).
_SECRET_PARAMETER = re.compile(r"([?&;][^=&;#]*(?:pass|secret|token)[^=&;#]*=)[^&;#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***: `redis://:***@host:6379/0`, `postgresql://user:***@host/db`.

    Plain string work, no URL parser: a URL malformed enough to fail parsing is what a failure line shows,
    and it must be masked too. The user info ends at the last `@` before the query, so a password holding
    an unescaped `/` or `@` is masked whole.
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    head, query_mark, query = rest.partition("?")
    userinfo, at, host = head.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        head = f"{user}:{MASK}@{host}" if colon else f"{user}@{host}"
    masked_query = _SECRET_PARAMETER.sub(rf"\g<1>{MASK}", f"?{query}")[1:] if query_mark else ""
    return f"{scheme}://{head}{query_mark}{masked_query}"
