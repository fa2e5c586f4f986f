"""The local catalog's aliases through every operation: the openai SDK, the real router,
real vLLM and Infinity (the session's shared router, tests/conftest.py ``e2e_router``).

vLLM and Infinity serve a model under its served name only, so each answer here proves that
the router sent that name; each answer's ``model`` must be the alias the request used.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e_router import MINILM, TINY, RunningRouter

# The shared router starts vLLM and Infinity on first use (up to its wait_s, 300 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
TINY_ALIAS = "local/tiny-llama-previous"
MINILM_ALIAS = "local/minilm-previous"
HELLO = [{"role": "user", "content": "hello"}]


def test_chat_and_completions_under_the_alias(e2e_router: RunningRouter) -> None:
    client = e2e_router.client()
    by_alias = client.chat.completions.create(
        model=TINY_ALIAS, messages=HELLO, max_tokens=4, temperature=0
    )
    assert by_alias.model == TINY_ALIAS and by_alias.usage.completion_tokens >= 1
    by_name = client.chat.completions.create(
        model=TINY, messages=HELLO, max_tokens=4, temperature=0
    )
    assert by_name.model == TINY
    assert by_alias.choices[0].message.content == by_name.choices[0].message.content
    completion = client.completions.create(model=TINY_ALIAS, prompt="The sky is", max_tokens=3)
    assert completion.model == TINY_ALIAS and completion.usage.completion_tokens == 3
    across = e2e_router.client("/v1").chat.completions.create(
        model=TINY_ALIAS, messages=HELLO, max_tokens=2
    )
    assert across.model == TINY_ALIAS


def test_streams_under_the_alias_name_it_in_every_chunk(e2e_router: RunningRouter) -> None:
    client = e2e_router.client()
    chunks = list(
        client.chat.completions.create(
            model=TINY_ALIAS,
            messages=HELLO,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks and {c.model for c in chunks} == {TINY_ALIAS}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    text = list(client.completions.create(model=TINY_ALIAS, prompt="a", max_tokens=2, stream=True))
    assert text and {c.model for c in text} == {TINY_ALIAS}


def test_embeddings_under_the_alias(e2e_router: RunningRouter) -> None:
    client = e2e_router.client("/resource_server/local/infinity/v1")
    vectors = client.embeddings.create(model=MINILM_ALIAS, input=["one", "two"])
    assert vectors.model == MINILM_ALIAS
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    same = client.embeddings.create(model=MINILM, input=["one", "two"])
    assert same.model == MINILM
    assert same.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-5)


def test_embeddings_with_the_chat_alias_is_a_400_saying_where(e2e_router: RunningRouter) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        e2e_router.client("/v1").embeddings.create(model=TINY_ALIAS, input="x")
    error = caught.value.response.json()["error"]
    assert error["code"] == "wrong_operation"
    assert "/resource_server/local/vllm/v1" in error["message"]
    listed = httpx.get(
        e2e_router.url + "/resource_server/list-endpoints",
        headers={"Authorization": f"Bearer {e2e_router.key}"},
    ).json()
    models = listed["clusters"]["local"]["frameworks"]["vllm"]["models"]
    [tiny] = [m for m in models if TINY_ALIAS in m["aliases"]]
    assert tiny["aliases"] == [TINY_ALIAS]
