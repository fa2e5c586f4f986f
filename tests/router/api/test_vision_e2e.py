"""The guide's vision example against the tiny vision model, through the real router and vLLM.

The router is the slow tiers' shared one (tests/conftest.py ``e2e_router``: engine executor,
real vLLM, a scratch root); the model is endpoints/local/tiny-vision.yaml, an Idefics3 with
random weights (scripts/make_tiny_vision_model.py). The guide's script runs as a user runs
it, from a folder holding its ``scientific_diagram.png``, with its token from the helper.
"""

from __future__ import annotations

import base64
import runpy
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import node_runtime
import pytest
import yaml

from inference_bundle.config.catalog import load_catalog
from inference_bundle.rendering.specs import server_spec
from tests.e2e_router import RunningRouter

# The router may start the vision model's vLLM here (up to its wait_s, 300 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

VISION = "local/tiny-vision"
GUIDE_BASE_URL = "https://data-portal-dev.cels.anl.gov/resource_server/sophia/vllm/v1"
GUIDE_MODEL = "Qwen/Qwen2-VL-72B-Instruct"
# The guide's last line prints an attribute the openai SDK's answer does not have.
GUIDE_LAST_LINE = "print(response.server_response)"
PRINT_CONTENT = "print(response.choices[0].message.content)"

# Copied from the guide ("Using Vision Model"), unchanged.
GUIDE_VISION_EXAMPLE = """from openai import OpenAI
import base64
from inference_auth_token import get_access_token

# Get your access token
access_token = get_access_token()
    
# Initialize the client
client = OpenAI(
    api_key=access_token,
    base_url="https://data-portal-dev.cels.anl.gov/resource_server/sophia/vllm/v1"
)

# Function to encode image to base64
def encode_image(image_path):
    with open(image_path, "rb") as image_file:
        return base64.b64encode(image_file.read()).decode('utf-8')

# Prepare the image
image_path = "scientific_diagram.png"
base64_image = encode_image(image_path)

# Create vision model request
response = client.chat.completions.create(
    model="Qwen/Qwen2-VL-72B-Instruct",
    messages=[
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the key components in this scientific diagram"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{base64_image}"}}
            ]
        }
    ],
    max_tokens=300
)

# Print the model's analysis
print(response.server_response)
"""  # noqa: W293 (the guide's line of spaces, kept)


def png(width: int, height: int, pixel: Any) -> bytes:
    """An RGB PNG whose pixel (x, y) is ``pixel(x, y)``; written by hand (no Pillow here)."""
    rows = b"".join(
        b"\0" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def diagram(x: int, y: int) -> tuple[int, int, int]:
    """Two boxes joined by an arrow's shaft, on white: a "scientific diagram" of 120x80."""
    in_box = any(
        left <= x <= left + 30 and 20 <= y <= 60 and (x in (left, left + 30) or y in (20, 60))
        for left in (10, 80)
    )
    if in_box:
        return (0, 0, 200)
    if 40 < x < 80 and 39 <= y <= 41:
        return (200, 0, 0)
    return (255, 255, 255)


@pytest.fixture(scope="module")
def router(e2e_router: RunningRouter) -> Iterator[RunningRouter]:
    """The shared router; the vision model's server stops after this module: it frees the
    CPU and memory, and test_openai_e2e counts the vLLM servers over the shared root."""
    yield e2e_router
    catalog = load_catalog(e2e_router.root, "local")
    [entry] = [e for e in catalog.entries if e.endpoint.model == VISION]
    node_runtime.stop_server(server_spec(entry, catalog.profile))


@pytest.fixture
def token_for(router: RunningRouter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token helper hands the router's API key out, as for `make deploy`'s local cluster."""
    key_file = tmp_path / "local-api-key"
    key_file.write_text(router.key + "\n")
    config = tmp_path / "token_helper.yaml"
    clusters = {"local": {"kind": "api_key", "api_key_file": str(key_file)}}
    config.write_text(yaml.safe_dump({"default": "local", "clusters": clusters}))
    monkeypatch.setenv("INFERENCE_AUTH_CONFIG", str(config))
    monkeypatch.setenv("INFERENCE_AUTH_CLUSTER", "local")


def guide_script(router: RunningRouter) -> str:
    """The guide's example with only its base URL, model name and last line changed."""
    script = GUIDE_VISION_EXAMPLE
    for old, new in (
        (GUIDE_BASE_URL, router.url + "/resource_server/local/vllm/v1"),
        (GUIDE_MODEL, VISION),
        (GUIDE_LAST_LINE, PRINT_CONTENT),
    ):
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    return script


def chat(router: RunningRouter, content: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(
        router.url + "/resource_server/local/vllm/v1/chat/completions",
        headers={"Authorization": f"Bearer {router.key}"},
        json={"model": VISION, "messages": [{"role": "user", "content": content}], "max_tokens": 1},
        timeout=330,  # the router waits up to 300 s for a cold server
    )


PROMPT = {"type": "text", "text": "Describe the key components in this scientific diagram"}


def test_the_guides_vision_example(
    router: RunningRouter,
    token_for: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "scientific_diagram.png").write_bytes(png(120, 80, diagram))
    (work / "vision_example.py").write_text(guide_script(router))
    monkeypatch.chdir(work)  # the script opens the picture by its relative name

    ran = runpy.run_path(str(work / "vision_example.py"), run_name="__main__")

    response = ran["response"]
    assert response.model == VISION
    [choice] = response.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert 1 <= response.usage.completion_tokens <= 300
    assert capsys.readouterr().out == f"{choice.message.content}\n"
    # The picture was really read: the same request without it has fewer prompt tokens.
    without = chat(router, [PROMPT])
    assert without.status_code == 200, without.text
    assert response.usage.prompt_tokens > without.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,@@not base64@@",
        "data:image/png;base64," + base64.b64encode(b"plain text, not a picture").decode(),
        "http://127.0.0.1:9/scientific_diagram.png",  # not fetched: data URLs only
    ],
    ids=["not-base64", "not-an-image", "http-url"],
)
def test_a_bad_image_is_a_400_in_openais_error_format(router: RunningRouter, url: str) -> None:
    answer = chat(router, [PROMPT, {"type": "image_url", "image_url": {"url": url}}])
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "BadRequestError"
