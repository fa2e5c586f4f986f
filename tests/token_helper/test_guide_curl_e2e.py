"""The guide's chat curl example against a local router over real vLLM, token from the helper.

The router is the slow tiers' shared one (tests/conftest.py `e2e_router`: engine executor,
real vLLM, a scratch root), laid out as `make deploy` leaves it: its API key in
.state/router/local-api-key and this helper at the root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_router import TINY, RunningRouter
from tests.token_helper.conftest import ROOT

# The session's router may start vLLM here; the script itself may take up to 600 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Copied from the guide ("Chat Completions Curl Example"), unchanged.
GUIDE_CHAT_CURL = """#!/bin/bash

# Get your access token
access_token=$(python inference_auth_token.py get_access_token)

# Define the base URL
base_url="https://data-portal-dev.cels.anl.gov/resource_server/sophia/vllm/v1/chat/completions"

# Define the model and parameters
model="meta-llama/Meta-Llama-3.1-8B-Instruct"
temperature=0.2
max_tokens=150

# Define an array of messages
messages=(
  "List all proteins that interact with RAD51"
  "What are the symptoms of diabetes?"
  "How does photosynthesis work?"
)

# Loop through the messages and send a POST request for each
for message in "${messages[@]}"; do
  curl -X POST "$base_url" \\
       -H "Authorization: Bearer ${access_token}" \\
       -H "Content-Type: application/json" \\
       -d '{
              "model": "'$model'",
              "temperature": '$temperature',
              "max_tokens": '$max_tokens',
              "messages":[{"role": "user", "content": "'"$message"'"}]
           }'
done
"""


def json_values(text: str) -> list[Any]:
    """The JSON bodies curl printed back to back."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        value, at = decoder.raw_decode(text, at)
        values.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return values


def test_the_guides_chat_curl_example(e2e_root: Path, e2e_router: RunningRouter) -> None:
    root, router = e2e_root, e2e_router
    key_file = root / ".state" / "router" / "local-api-key"  # where `make deploy` writes it
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(router.key + "\n")
    shutil.copy2(ROOT / "inference_auth_token.py", root)
    script = GUIDE_CHAT_CURL.replace(  # only the base URL and the model change
        "https://data-portal-dev.cels.anl.gov/resource_server/sophia",
        f"{router.url}/resource_server/local",
    ).replace("meta-llama/Meta-Llama-3.1-8B-Instruct", TINY)
    env = dict(
        os.environ,
        INFERENCE_AUTH_CLUSTER="local",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # its `python`
    )
    ran = subprocess.run(
        ["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    answers = json_values(ran.stdout)
    assert len(answers) == 3, ran.stdout[-2000:]
    for answer in answers:
        assert answer.get("object") == "chat.completion", answer
        assert answer["model"] == TINY
        assert answer["choices"][0]["message"]["role"] == "assistant"
        assert 1 <= answer["usage"]["completion_tokens"] <= 150
