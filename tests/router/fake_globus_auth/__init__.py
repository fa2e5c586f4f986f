"""A fake Globus Auth and Groups service on 127.0.0.1, for tests that use globus_sdk unchanged.

    with FakeGlobusAuth() as fake:
        monkeypatch.setenv(...) for each item of fake.env   # or fake.apply_env(monkeypatch)
        token = fake.add_token("jdoe@anl.gov", groups=["<group id>"])
        ...
        assert fake.introspections == 1

It answers what globus_sdk calls: token introspection (`POST /v2/oauth2/token/introspect`),
the dependent-token, refresh-token and native-app authorization-code grants
(`POST /v2/oauth2/token`), revocation (`POST /v2/oauth2/token/revoke`), userinfo
(`GET /v2/oauth2/userinfo`) and `GET /v2/groups/my_groups`. Confidential calls must carry
HTTP Basic with the client's id and secret, as Globus Auth demands; native-app calls carry
their client id in the form and prove the login with PKCE instead.

A native-app login, with the browser step played by the test:

    url = <the authorize URL the app printed>
    code = fake.approve(url, "jdoe@anl.gov")   # what Globus Auth shows after the login
    <give the code to the app, which exchanges it for tokens>
"""

from .server import FakeGlobusAuth
from .service import FakeIdentity

__all__ = ["FakeGlobusAuth", "FakeIdentity"]
