"""What the auth tests share: group ids, a settable clock, settings, and a rejection check."""

from __future__ import annotations

import time

import pytest

from inference_bundle.config.settings import (
    ClusterPolicy,
    GlobusAuthSettings,
    GlobusModeAuthSettings,
)
from inference_bundle.router.auth import Caller
from inference_bundle.router.errors import APIError
from tests.router.fake_globus_auth import FakeGlobusAuth

AURORAGPT_ID = "11111111-1111-1111-1111-111111111111"
STAFF_ID = "22222222-2222-2222-2222-222222222222"
UNMAPPED_ID = "33333333-3333-3333-3333-333333333333"
SECRET_ENV = "TEST_ROUTER_GLOBUS_SECRET"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def globus_settings(fake: FakeGlobusAuth | None = None, **globus: object) -> GlobusModeAuthSettings:
    return GlobusModeAuthSettings(
        mode="globus",
        globus=GlobusAuthSettings.model_validate(
            {
                "client_id": fake.client_id if fake else "router-client-id",
                "client_secret_env": SECRET_ENV,
                "groups": {"auroragpt": AURORAGPT_ID, "alcf-staff": STAFF_ID},
                **globus,
            }
        ),
        policy={
            "sophia": ClusterPolicy(identity_domains=["anl.gov", "alcf.anl.gov"]),
            "polaris": ClusterPolicy(groups=["alcf-staff"]),
        },
    )


def rejected(auth: object, header: str | None, status: int = 401) -> APIError:
    with pytest.raises(APIError) as caught:
        auth.authenticate(header)  # type: ignore[attr-defined]
    assert caught.value.status == status, caught.value.message
    return caught.value


def caller(user: str, *groups: str) -> Caller:
    return Caller(user=user, identity_id=None, groups=frozenset(groups))
