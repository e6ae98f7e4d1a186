"""What people write on runs and model versions: tags (key: text, searchable) and a markdown note, with the checks
both share; the dashboard renders a note's markdown with raw HTML refused and unsafe links dropped."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from trainq.models.spec import TAG_KEY, tag_text
from trainq.service.http import fail

MAX_TAGS = 50
MAX_TAG_VALUE = 500
MAX_NOTE = 50_000


def tag_key(key: str) -> str:
    if not re.fullmatch(TAG_KEY, key):
        fail(400, "bad_request", f"tag key {key[:100]!r}: letters, digits, _ . - / and spaces, up to 100, not "
                                 "starting with a symbol", errors=[{"path": "key", "message": "not a tag key"}])
    return key


def tag_value(body: Any) -> str:
    """The `value` of a body {"value": ...}: text, or a number or boolean taken as its text."""
    value = tag_text(body.get("value")) if isinstance(body, dict) else None
    if not isinstance(value, str):
        fail(422, "validation", "the body is {\"value\": TEXT}",
             errors=[{"path": "value", "message": "a string (a number or boolean is taken as its text)"}])
    if len(value) > MAX_TAG_VALUE or "\x00" in value:
        fail(422, "validation", f"a tag's value is up to {MAX_TAG_VALUE} characters",
             errors=[{"path": "value", "message": f"longer than {MAX_TAG_VALUE} characters"}])
    return value


def with_tag(tags: dict[str, str] | None, key: str, value: str) -> dict[str, str]:
    tags = dict(tags or {})
    if key not in tags and len(tags) >= MAX_TAGS:
        fail(409, "too_many_tags", f"a run holds up to {MAX_TAGS} tags; delete one first")
    tags[key] = value
    return tags


def without_tag(tags: dict[str, str] | None, key: str) -> dict[str, str] | None:
    tags = dict(tags or {})
    if key not in tags:
        fail(404, "not_found", f"no tag {key!r}")
    del tags[key]
    return tags or None


def note_text(body: Any, field: str = "note") -> str:
    value = body.get(field) if isinstance(body, dict) else None
    if not isinstance(value, str):
        fail(422, "validation", f"the body is {{\"{field}\": MARKDOWN}}",
             errors=[{"path": field, "message": "a string of markdown (empty to clear it)"}])
    if len(value) > MAX_NOTE:
        fail(422, "validation", f"a {field} is up to {MAX_NOTE} characters",
             errors=[{"path": field, "message": f"longer than {MAX_NOTE} characters"}])
    return value


SAFE_LINK = re.compile(r"^(https?:|mailto:|/|#|\.{0,2}/?[^:]*$)", re.IGNORECASE)


@lru_cache(maxsize=1)
def renderer():
    from markdown_it import MarkdownIt

    made = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    made.validateLink = lambda url: bool(SAFE_LINK.match(url.strip()))
    return made


def markdown_html(text: str) -> str:
    """Markdown as HTML that runs nothing: raw HTML in the text is shown as text, and links other than http(s),
    mailto and relative ones are not made (markdown-it's CommonMark with html off and its link validation)."""
    return renderer().render(text or "")
