"""README and code agree on the error codes: every `error` the ingest code can answer is in the README's
table, with the status the code gives it, and the table lists no code the code never answers."""

from __future__ import annotations

import re

from services.ingest import app
from tests.conftest import REPO_ROOT

_SOURCES = sorted((REPO_ROOT / "services" / "ingest").glob("*.py"))
_ROW = re.compile(r"^\| (\d{3}|other) \| `([a-z_]+)` \|", re.MULTILINE)


def _answered() -> set[tuple[str, str]]:
    """(status, code) pairs from the code: ApiError(status, "code", ...), ErrorBody("code", ...), status) and
    `return status, _encode(Body("code", ...))`."""
    pairs: set[tuple[str, str]] = set()
    for path in _SOURCES:
        text = path.read_text()
        pairs.update(re.findall(r'ApiError\((\d{3}), "([a-z_]+)"', text))
        pairs.update((status, code) for code, status in
                     re.findall(r'ErrorBody\("([a-z_]+)", [^)]*\), (\d{3})', text))
        # An error body of its own (amend_rejected carries the order): `return 409, _encode(Body("code", ...`.
        pairs.update(re.findall(r'return (\d{3}), _encode\(\w+\("([a-z_]+)"', text))
    pairs.update((str(status), code) for status, code in app._HTTP_CODES.items())
    pairs.add(("other", "http_error"))
    return pairs


def test_every_error_code_is_in_the_readme_with_its_status_and_no_other() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    listed = set(_ROW.findall(readme))
    answered = _answered()
    assert ("422", "validation_error") in answered and ("409", "duplicate_client_order_id") in answered
    assert answered == listed
    assert "validation_failed" not in readme
