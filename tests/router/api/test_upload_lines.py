"""An uploaded batch file's lines: numbered as a reader counts them, blank ones skipped."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from inference_bundle.router.api.upload_lines import BLOCK, _request_lines, check_batch_lines
from inference_bundle.router.errors import APIError


def by_hand(data: bytes) -> list[tuple[int, bytes]]:
    """What _request_lines must give: every line that is not blank, numbered from 1."""
    return [(n, line) for n, line in enumerate(data.split(b"\n"), 1) if line.strip()]


@pytest.mark.parametrize("seed", range(20))
def test_lines_across_blocks_of_blanks_and_requests_keep_their_numbers(seed: int) -> None:
    chooser = random.Random(seed)
    pieces = []
    for _ in range(chooser.randint(1, 30)):
        kind = chooser.random()
        if kind < 0.4:
            pieces.append(b"\n" * chooser.randint(1, 3 * BLOCK))  # whole blank blocks
        elif kind < 0.6:
            pieces.append(b" \t" * chooser.randint(1, BLOCK))  # blank, with no line end
        else:
            pieces.append(b'{"custom_id": "%d"}' % chooser.randint(0, 9) * chooser.randint(1, 900))
        if chooser.random() < 0.5:
            pieces.append(b"\n")
    data = b"".join(pieces)
    assert list(_request_lines(io.BytesIO(data))) == by_hand(data)


def test_a_file_of_newlines_is_empty_and_named_so(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n" * (6 * 1024 * 1024))
    with pytest.raises(APIError) as caught:
        check_batch_lines(path, time_limit_s=30)
    assert caught.value.code == "empty_file"


def test_a_request_after_many_blank_blocks_has_its_line_number(tmp_path: Path) -> None:
    path = tmp_path / "late.jsonl"
    path.write_bytes(b"\n" * (5 * BLOCK) + b"  [1]\n")
    with pytest.raises(APIError) as caught:
        check_batch_lines(path, time_limit_s=30)
    assert caught.value.extra["lines"] == [
        {"line": 5 * BLOCK + 1, "reason": "is a JSON array, not an object"}
    ]
