"""A row read by id on a caller's behalf: another tenant's row is a 404 with the caller's
message, the owner and the admin see it."""

from types import SimpleNamespace

import pytest

from ownllm.errors import NotFoundError
from ownllm.gateway.principal import ADMIN_TENANT, Principal
from ownllm.store.tenancy import visible

ROW = SimpleNamespace(id="thing-1", tenant_id="acme")


def test_the_owner_and_the_admin_see_the_row():
    assert visible(ROW, Principal(tenant_id="acme"), "unused", "id") is ROW
    admin = Principal(tenant_id=ADMIN_TENANT, is_admin=True)
    assert visible(ROW, admin, "unused", "id") is ROW


@pytest.mark.parametrize("row", [ROW, None], ids=["another tenant's", "missing"])
def test_another_tenants_row_reads_as_a_missing_one(row):
    with pytest.raises(NotFoundError) as e:
        visible(row, Principal(tenant_id="globex"), "No such thing: thing-1", "thing_id")
    assert (e.value.status_code, e.value.message, e.value.param) == (
        404,
        "No such thing: thing-1",
        "thing_id",
    )
