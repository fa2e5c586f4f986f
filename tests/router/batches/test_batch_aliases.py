"""A batch line may name its model by an alias of the batch's model (the catalog's aliases)."""

from __future__ import annotations

import json

from inference_bundle.router.batches.validation import check_lines

URLS = ("/v1/chat/completions",)


def _line(n: int, model: str) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    line = {"custom_id": f"r{n}", "method": "POST", "url": URLS[0], "body": body}
    return json.dumps(line).encode()


def test_lines_may_use_the_models_aliases_and_nothing_else() -> None:
    lines = [_line(0, "m"), _line(1, "m-old"), _line(2, "other")]
    check = check_lines(lines, "m", URLS, aliases=("m-old",))
    assert check.requests == 3
    assert check.problems == [(3, "body.model is 'other', not the batch's model 'm'")]
    # without the alias, it is refused like any other name
    assert [n for n, _ in check_lines(lines, "m", URLS).problems] == [2, 3]
