"""A row read by id on a caller's behalf: another tenant's row is a 404 with the caller's
message, the owner and the admin see it."""

from types import SimpleNamespace

import pytest
from sqlalchemy import select

from ownllm.errors import NotFoundError
from ownllm.gateway.principal import ADMIN_TENANT, Principal
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.schema import File
from ownllm.store.tenancy import get_visible, visible, visible_rows
from ownllm.tuning.files import save_bytes

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


def test_get_visible_reads_the_row_by_its_key(db_url, tmp_path):
    db = Database.open(db_url)
    try:
        data_dir = DataDir(tmp_path / "home").ensure()
        saved = save_bytes(db, data_dir, [b"{}\n"], tenant_id="acme", filename="a.jsonl",
                           purpose="fine-tune")  # fmt: skip
        row = get_visible(db, File, saved.id, Principal(tenant_id="acme"), "unused", "file_id")
        assert (row.id, row.filename) == (saved.id, "a.jsonl")
        with pytest.raises(NotFoundError) as e:
            get_visible(db, File, saved.id, Principal(tenant_id="globex"), "gone", "file_id")
        assert (e.value.message, e.value.param) == ("gone", "file_id")
    finally:
        db.close()


def test_visible_rows_lists_the_tenants_own_and_all_for_the_admin(db_url, tmp_path):
    db = Database.open(db_url)
    try:
        data_dir = DataDir(tmp_path / "home").ensure()
        ids = {
            tenant: save_bytes(
                db, data_dir, [b"{}\n"], tenant_id=tenant, filename="a.jsonl", purpose="fine-tune"
            ).id
            for tenant in ("acme", "globex")
        }
        admin = Principal(tenant_id=ADMIN_TENANT, is_admin=True)
        with db.session() as s:
            listed = {
                who.tenant_id: set(s.scalars(visible_rows(select(File.id), File, who)))
                for who in (Principal(tenant_id="acme"), admin)
            }
        assert listed == {"acme": {ids["acme"]}, ADMIN_TENANT: set(ids.values())}
    finally:
        db.close()
