"""Real vLLM puts its IPC sockets in its server's scratch folder, not the node's temp folder
(test_runtime_folder.py shows the folder goes with its server)."""

from __future__ import annotations

from typing import Any

import pytest
from node_runtime.server_files import ServerPaths, read_state, runtime_folder

from .local_backends import Spec

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_vllms_sockets_are_in_its_own_folder(
    chat_spec: Spec, chat_first_calls: list[dict[str, Any]]
) -> None:
    assert all(call["status"] == 200 for call in chat_first_calls)
    state = read_state(ServerPaths.for_model(chat_spec["state_dir"], chat_spec["name"]))
    assert state is not None
    made = [p for p in runtime_folder(state.server_id).iterdir() if p.is_socket()]
    assert made, "vLLM made no socket in its scratch folder"
