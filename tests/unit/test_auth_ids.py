"""Session ids scoped per tenant: tenants choose ids without meeting each other's."""

import pytest


def test_session_ids_are_scoped_per_tenant():
    from soma.errors import InvalidArgument
    from soma.server.auth import LOCAL_TENANT, scoped_session_id, unscoped_session_id

    a, b = scoped_session_id("tenant-a", "s-1"), scoped_session_id("tenant-b", "s-1")
    assert a != b and a.endswith(".s-1") and unscoped_session_id("tenant-a", a) == "s-1"
    assert scoped_session_id(LOCAL_TENANT, "s-1") == "s-1" == scoped_session_id(None, "s-1")
    with pytest.raises(InvalidArgument, match="reserved"):  # a scoped-looking id cannot be taken locally
        scoped_session_id(LOCAL_TENANT, a)
    with pytest.raises(InvalidArgument, match="limit"):
        scoped_session_id("tenant-a", "x" * 128)
