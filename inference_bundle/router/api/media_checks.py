"""Media a request names (pictures, recordings, videos), checked before any server sees them.

Every API shape vLLM reads media from: OpenAI's chat parts (``image_url``, ``audio_url``,
``video_url`` as a string or ``{"url": ...}``, ``input_audio``), Responses' ``input_image``
(``image_url`` as a string) and Anthropic's image blocks (``source`` of type ``url`` or
``base64``, in messages and in tool results). vLLM fetches an http(s) URL itself, turns a
base64 source into a data: URL, and answers what it cannot read (another scheme, a
non-string, a host that does not resolve) with a 500: each of those is the user's 400 here.
"""

from __future__ import annotations

import re
from typing import Any

from inference_bundle.router.errors import APIError
from inference_bundle.router.host_lookup import MOST_HOSTS, MediaURL

MEDIA_KEYS = ("image_url", "video_url", "audio_url")
MEDIA_SCHEMES = ("data:", "http://", "https://")
# Anthropic's own list; vLLM writes the media type into a data: URL as it is.
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# vLLM writes input_audio's format into a data: URL too: one short word ("wav", "mp3").
_AUDIO_FORMAT = re.compile(r"[A-Za-z0-9]{1,16}")
# An http(s) URL's host: after the scheme and any user info, up to a port, path, query or
# fragment; an IPv6 address in its brackets.
_AUTHORITY = re.compile(r"https?://(?:[^/?#]*@)?(\[[^\]/?#]*\]|[^:/?#]*)", re.IGNORECASE)


def media_urls(body: Any) -> list[MediaURL]:
    """The http(s) media URLs of a request body, one a host (the first MOST_HOSTS); the 400
    for any media source vLLM would fail on. A body that names no media costs one walk."""
    found: dict[str, MediaURL] = {}
    pending: list[Any] = [body]
    while pending:
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            kind = value.get("type")
            if kind == "image" and "source" in value:
                _anthropic_source(value["source"], found)
            elif kind == "input_audio" and "input_audio" in value:
                _input_audio(value["input_audio"])
            for key, item in value.items():
                if key in MEDIA_KEYS and isinstance(item, str):
                    _url(key, item, found)
                elif key in MEDIA_KEYS and isinstance(item, dict) and "url" in item:
                    if not isinstance(item["url"], str):
                        raise _invalid(f"An {key}'s url must be a string.", f"{key}.url")
                    _url(key, item["url"], found)
                elif isinstance(item, list | dict):
                    pending.append(item)
    return list(found.values())


def _url(param: str, url: str, found: dict[str, MediaURL]) -> None:
    """The 400 for a URL that is neither data: nor http(s), or names no host."""
    # A pattern, not urlsplit: a body may name many thousands of URLs, read on the loop.
    authority = _AUTHORITY.match(url)
    if authority is not None:
        host = authority.group(1).strip("[]").lower()
        if host:
            if len(found) < MOST_HOSTS and host not in found:
                found[host] = MediaURL(param, host)
            return
    lowered = url[:8].lower()
    if not lowered.startswith(MEDIA_SCHEMES):
        given = f"a {url.partition(':')[0][:16]!r} URL" if ":" in url else "a URL without a scheme"
        raise _invalid(
            f"An {param} must be a data: URL (base64, as 'data:image/png;base64,...') or an "
            f"http(s) URL, not {given}.",
            param,
        )
    if not lowered.startswith("data:"):
        raise _invalid(
            f"The {param} {url[:64]!r} is no valid http(s) URL: it names no host.", param
        )


def _anthropic_source(source: Any, found: dict[str, MediaURL]) -> None:
    """An Anthropic image block's source: a url, or base64 data with an image media type."""
    shapes = (
        "{'type': 'base64', 'media_type': 'image/png', 'data': '...'} or "
        "{'type': 'url', 'url': 'https://...'}"
    )
    if not isinstance(source, dict):
        raise _invalid(f"An image block's 'source' must be an object: {shapes}.", "source")
    kind = source.get("type")
    if kind not in ("base64", "url"):
        shown = repr(kind[:32]) if isinstance(kind, str) else "missing or no string"
        raise _invalid(
            f"An image block's source 'type' must be 'base64' or 'url' ({shapes}); it is {shown}.",
            "source.type",
        )
    if kind == "url":
        url = source.get("url")
        if not isinstance(url, str):
            raise _invalid("An image block's source 'url' must be a string.", "source.url")
        _url("source.url", url, found)
        return
    media_type = source.get("media_type")
    if media_type not in IMAGE_MEDIA_TYPES:
        shown = repr(media_type[:32]) if isinstance(media_type, str) else "missing or no string"
        raise _invalid(
            f"An image block's source 'media_type' must be one of {', '.join(IMAGE_MEDIA_TYPES)}"
            f"; it is {shown}.",
            "source.media_type",
        )
    data = source.get("data")
    if not isinstance(data, str) or not data:
        raise _invalid(
            "An image block's source 'data' must be the picture as a base64 string.",
            "source.data",
        )


def _input_audio(audio: Any) -> None:
    """An input_audio part: base64 data and a format word, both strings."""
    data = audio.get("data") if isinstance(audio, dict) else None
    audio_format = audio.get("format") if isinstance(audio, dict) else None
    if not isinstance(data, str) or not data:
        raise _invalid(
            "An input_audio's 'data' must be the recording as a base64 string.",
            "input_audio.data",
        )
    if not isinstance(audio_format, str) or not _AUDIO_FORMAT.fullmatch(audio_format):
        raise _invalid(
            "An input_audio's 'format' must name the recording's format, as 'wav' or 'mp3'.",
            "input_audio.format",
        )


def _invalid(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")
