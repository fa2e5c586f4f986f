"""Media sources in every API shape: what vLLM would answer with a 500 is the user's 400.

OpenAI's chat parts, Responses' input images and Anthropic's image blocks (url and base64),
and the host of an http(s) URL that does not resolve; none of them reaches the endpoint.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest

from inference_bundle.router.api.media_checks import media_urls
from inference_bundle.router.errors import APIError
from inference_bundle.router.host_lookup import MOST_HOSTS, HostCheck, MediaURL
from tests.router.conftest import Harness

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
TINY = "local/tiny-llama"
PNG = "iVBORw0KGgo="
DATA_URL = f"data:image/png;base64,{PNG}"


def chat(*parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    content = [{"type": "text", "text": "what is this?"}, *parts]
    return "/v1/chat/completions", {
        "model": TINY,
        "messages": [{"role": "user", "content": content}],
    }


def responses(*parts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    content = [{"type": "input_text", "text": "what is this?"}, *parts]
    return "/v1/responses", {"model": TINY, "input": [{"role": "user", "content": content}]}


def messages(*blocks: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    content = [{"type": "text", "text": "what is this?"}, *blocks]
    return "/v1/messages", {
        "model": TINY,
        "max_tokens": 8,
        "messages": [{"role": "user", "content": content}],
    }


def image(source: Any) -> dict[str, Any]:
    return {"type": "image", "source": source}


def in_tool_result(block: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    result = {"type": "tool_result", "tool_use_id": "call_1", "content": [block]}
    return messages(result)


REFUSED = {
    "chat image_url object, file:": (
        chat({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}),
        "image_url",
    ),
    "chat image_url string, file:": (
        chat({"type": "image_url", "image_url": "file:///etc/passwd"}),
        "image_url",
    ),
    "chat image_url, url no string": (
        chat({"type": "image_url", "image_url": {"url": ["http://a"]}}),
        "image_url.url",
    ),
    "chat image_url, no host": (
        chat({"type": "image_url", "image_url": {"url": "https:///x.png"}}),
        "image_url",
    ),
    "chat video_url, ftp:": (
        chat({"type": "video_url", "video_url": {"url": "ftp://host/v.mp4"}}),
        "video_url",
    ),
    "chat audio_url, gopher:": (
        chat({"type": "audio_url", "audio_url": {"url": "gopher://host/a.wav"}}),
        "audio_url",
    ),
    "chat input_audio, data no string": (
        chat({"type": "input_audio", "input_audio": {"data": {"x": 1}, "format": "wav"}}),
        "input_audio.data",
    ),
    "chat input_audio, format with a comma": (
        chat({"type": "input_audio", "input_audio": {"data": PNG, "format": "wav;base64,"}}),
        "input_audio.format",
    ),
    "responses input_image, file:": (
        responses({"type": "input_image", "image_url": "file:///etc/passwd"}),
        "image_url",
    ),
    "responses input_image, no scheme": (
        responses({"type": "input_image", "image_url": "cat.png"}),
        "image_url",
    ),
    "messages url source, file:": (
        messages(image({"type": "url", "url": "file:///etc/passwd"})),
        "source.url",
    ),
    "messages url source, url no string": (
        messages(image({"type": "url", "url": 7})),
        "source.url",
    ),
    "messages base64 source, data no string": (
        messages(image({"type": "base64", "media_type": "image/png", "data": {"a": 1}})),
        "source.data",
    ),
    "messages base64 source, bad media_type": (
        messages(image({"type": "base64", "media_type": "text/html,x", "data": PNG})),
        "source.media_type",
    ),
    "messages source of another type": (
        messages(image({"type": "file", "file_id": "f-1"})),
        "source.type",
    ),
    "messages source no object": (messages(image("file:///etc/passwd")), "source"),
    "messages tool result image, file:": (
        in_tool_result(image({"type": "url", "url": "file:///etc/passwd"})),
        "source.url",
    ),
}


@pytest.mark.parametrize(("request_", "param"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_media_source_vllm_cannot_read_is_a_400_naming_its_field(
    harness: Harness, request_: tuple[str, dict[str, Any]], param: str
) -> None:
    path, body = request_
    answer = await harness.client.post(path, json=body, headers=harness.auth)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["param"], error["code"]) == (param, "invalid_value")
    assert error["message"].endswith(".")
    assert harness.endpoint.submitted == []


SCHEMA = {"type": "object", "properties": {"image_url": {"type": "string", "format": "uri"}}}
ACCEPTED = {
    "chat data: URL": chat({"type": "image_url", "image_url": {"url": DATA_URL}}),
    "chat input_audio": chat(
        {"type": "input_audio", "input_audio": {"data": PNG, "format": "mp3"}}
    ),
    "responses data: URL": responses({"type": "input_image", "image_url": DATA_URL}),
    "messages base64": messages(image({"type": "base64", "media_type": "image/png", "data": PNG})),
    "messages url, an address": messages(image({"type": "url", "url": "http://127.0.0.1/a.png"})),
    "a tool schema with an image_url property": (
        "/v1/chat/completions",
        {
            "model": TINY,
            "messages": [{"role": "user", "content": "hi"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}],
        },
    ),
}


@pytest.mark.parametrize("request_", ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_media_vllm_reads_pass_through(
    harness: Harness, request_: tuple[str, dict[str, Any]]
) -> None:
    path, body = request_
    answer = await harness.client.post(path, json=body, headers=harness.auth)
    assert answer.status_code == 200, answer.text
    assert len(harness.endpoint.submitted) == 1


@pytest.fixture
async def fake_dns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The event loop's resolver, as a machine's DNS answers: names under .invalid do not
    exist (RFC 6761), whatever the machine running the tests can reach."""
    asked: list[str] = []

    async def getaddrinfo(self: Any, host: str, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host.endswith(".invalid"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return []

    monkeypatch.setattr(type(asyncio.get_running_loop()), "getaddrinfo", getaddrinfo)
    return asked


@pytest.mark.parametrize(
    "request_",
    [
        chat({"type": "image_url", "image_url": {"url": "https://no-such-host.invalid/a.png"}}),
        chat({"type": "image_url", "image_url": "http://no-such-host.invalid/a.png"}),
        responses({"type": "input_image", "image_url": "https://no-such-host.invalid/a.png"}),
        messages(image({"type": "url", "url": "https://no-such-host.invalid/a.png"})),
    ],
    ids=["chat object", "chat string", "responses", "messages"],
)
async def test_a_media_host_that_does_not_resolve_is_a_400_naming_it(
    harness: Harness, request_: tuple[str, dict[str, Any]], fake_dns: list[str]
) -> None:
    path, body = request_
    answer = await harness.client.post(path, json=body, headers=harness.auth)
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert "'no-such-host.invalid', which does not resolve" in error["message"]
    assert error["code"] == "invalid_value" and error["param"] in ("image_url", "source.url")
    assert harness.endpoint.submitted == [] and fake_dns == ["no-such-host.invalid"]


async def test_the_host_check_is_off_when_the_settings_say_so(
    make_harness: Any, fake_dns: list[str]
) -> None:
    h = make_harness(check_media_hosts=False)
    path, body = chat({"type": "image_url", "image_url": "http://no-such-host.invalid/a.png"})
    async with h.client:
        answer = await h.client.post(path, json=body, headers=h.auth)
    assert answer.status_code == 200, answer.text
    assert fake_dns == []


async def test_a_slow_or_failing_resolver_lets_requests_by_and_answers_are_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []

    async def getaddrinfo(self: Any, host: str, *args: Any, **kwargs: Any) -> list[Any]:
        asked.append(host)
        if host == "slow.example":
            await asyncio.sleep(30)
        if host == "gone.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if host == "dns-down.example":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return []

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(type(loop), "getaddrinfo", getaddrinfo)
    check = HostCheck(timeout_s=0.2)
    began = time.monotonic()
    urls = [MediaURL("image_url", h) for h in ("ok.example", "slow.example", "dns-down.example")]
    await check.check(urls)  # no refusal on doubt
    assert time.monotonic() - began < 2
    assert sorted(asked) == ["dns-down.example", "ok.example", "slow.example"]
    await check.check([MediaURL("image_url", "ok.example")])
    assert asked.count("ok.example") == 1  # remembered
    await check.check([MediaURL("image_url", "10.0.0.1"), MediaURL("image_url", "::1")])
    assert "10.0.0.1" not in asked  # an address is no name to look up
    with pytest.raises(APIError, match="'gone.example', which does not resolve"):
        await check.check([MediaURL("source.url", "gone.example")])


def test_a_request_names_each_host_once_and_no_more_than_are_looked_up() -> None:
    body = {"model": TINY, "messages": [{"role": "user", "content": "x" * 1000}] * 50}
    assert media_urls(body) == []  # no media: nothing to look up
    same = [
        {"type": "image_url", "image_url": f"https://u:p@Host.example:8443/{n}"} for n in range(9)
    ]
    assert media_urls(chat(*same)[1]) == [MediaURL("image_url", "host.example")]
    many = [{"type": "image_url", "image_url": f"http://h{n}.example/a"} for n in range(1000)]
    assert len(media_urls(chat(*many)[1])) == MOST_HOSTS
