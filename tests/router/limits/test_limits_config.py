"""Limits as settings: read from the router's file, reloaded while it runs (a bad file keeps
the last good limits), refused with the file and field named; and the rules they make (the
token estimate, the group a caller is charged to).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from inference_bundle.config.problems import SettingsError
from inference_bundle.config.settings import LimitsSettings, load_settings
from inference_bundle.router.limits.reload import LimitsConfigError
from inference_bundle.router.limits.rules import Cost, Rules, estimate
from tests.router.conftest import ROOT, Harness
from tests.router.limits_helpers import limits

pytestmark = pytest.mark.anyio


async def test_limits_in_the_settings_file_are_reloaded_and_a_bad_file_keeps_them(
    tmp_path: Path, make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    from inference_bundle.router.limits.reload import LimitsWatcher

    h = make_harness(limits=limits(requests_per_minute=1))
    config = tmp_path / "router.yaml"
    data = {
        "clusters": ["local", "sophia"],
        "executor": "engine",
        "state_dir": str(tmp_path / "router"),
        "auth": {"mode": "keys", "keys_file": str(tmp_path / "keys.json")},
        "limits": limits(requests_per_minute=5),
    }
    config.write_text(yaml.safe_dump(data))
    h.service.config_path = config
    watcher = LimitsWatcher(h.service.config_path, h.service.table, h.service.limiter)
    assert watcher.reload()
    assert h.service.limiter.rules.settings.clusters["local"].user.requests_per_minute == 5
    config.write_text(yaml.safe_dump({**data, "limits": limits(requests_per_minute=-1)}))
    assert not watcher.reload()
    assert "limits.clusters.local.user.requests_per_minute" in caplog.text
    assert h.service.limiter.rules.settings.clusters["local"].user.requests_per_minute == 5
    config.write_text(
        yaml.safe_dump({**data, "limits": {"clusters": {"local": {"models": {"nope": {}}}}}})
    )
    assert not watcher.reload()
    assert "limits.clusters.local.models.nope" in caplog.text


def test_bad_limits_name_the_file_and_the_field(tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "clusters": ["local"],
                "executor": "engine",
                "auth": {"mode": "keys"},
                "limits": {"clusters": {"local": {"user": {"requests_per_secnd": 10}}}},
            }
        )
    )
    with pytest.raises(SettingsError) as raised:
        load_settings(config, tmp_path)
    shown = [str(p) for p in raised.value.problems]
    assert any("limits.clusters.local.user.requests_per_secnd" in p for p in shown), shown
    assert all("router.yaml" in p for p in shown)


def test_limits_for_a_cluster_or_model_not_served_are_refused(tmp_path: Path) -> None:
    from inference_bundle.router.service import build_service
    from tests.router.conftest import settings

    for bad, field in [
        ({"clusters": {"polaris": {}}}, "limits.clusters.polaris"),
        ({"clusters": {"local": {"models": {"gpt-5": {}}}}}, "limits.clusters.local.models.gpt-5"),
    ]:
        with pytest.raises(LimitsConfigError, match=field):
            build_service(settings(tmp_path, limits=bad), ROOT, config_path=tmp_path / "r.yaml")


def test_the_estimate_covers_text_choices_and_non_text_parts() -> None:
    settings = LimitsSettings(prompt_bytes_per_token=2, default_max_tokens=100)
    chat = estimate(
        "/v1/chat/completions", {"messages": [{"role": "user", "content": "x" * 40}]}, settings
    )
    assert chat == Cost(prompt=(40 + len("user")) // 2 + 8, completion=100)  # values, not keys
    assert estimate(
        "/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 5, "n": 2}, settings
    ) == Cost(3, 10)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 10**6}}
    vision = estimate(
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": [image]}], "max_tokens": 1},
        settings,
    )
    assert vision.prompt < 2000  # an image is not its base64 text
    assert estimate("/v1/embeddings", {"input": ["ab", "cd"]}, settings) == Cost(2, 0)


def test_a_caller_is_charged_to_the_group_with_limits_of_its_own() -> None:
    rules = Rules(
        LimitsSettings.model_validate(
            {"clusters": {"local": {"groups": {"climate": {"tokens_per_day": 5}}}}}
        )
    )
    assert rules.group_of("local", frozenset({"aaa", "climate"})) == "climate"
    assert rules.group_of("local", frozenset({"zeta", "beta"})) == "beta"
    assert rules.group_of("local", frozenset()) == ""
    assert not Rules(LimitsSettings()).active
