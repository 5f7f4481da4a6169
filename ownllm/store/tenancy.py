"""One rule for a row read by its id on a caller's behalf: a row of another tenant reads as
one that does not exist. The answer is 404 with the caller's own message, never 403, which
would confirm that the id is taken. A list shows the caller's tenant's rows (the admin's:
all). Here in the store, so that every layer that reads rows (gateway, tuning, batches,
vectors, api) can use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ownllm.errors import NotFoundError

if TYPE_CHECKING:
    from sqlalchemy import Select

    from ownllm.store.db import Database

T = TypeVar("T")


class Viewer(Protocol):
    """What the rule needs of a principal (ownllm.gateway.principal.Principal)."""

    tenant_id: str
    is_admin: bool

    def can_see(self, owner_tenant_id: str, is_public: bool = False) -> bool: ...


def visible(row: T | None, viewer: Viewer, message: str, param: str) -> T:
    """`row` when it exists and the viewer may see it (its `tenant_id`); otherwise
    NotFoundError(message, param)."""
    owned: Any = row
    if owned is None or not viewer.can_see(owned.tenant_id):
        raise NotFoundError(message, param=param)
    return owned


def get_visible(
    db: Database, model: type[T], key: Any, viewer: Viewer, message: str, param: str
) -> T:
    """The row of `model` whose primary key is `key`, when `visible` to the viewer."""
    with db.session() as s:
        row = s.get(model, key)
    return visible(row, viewer, message, param)


def visible_rows(query: Select, model: type, viewer: Viewer) -> Select:
    """`query` over `model` narrowed to the rows the viewer may list: its tenant's, or every
    row for the admin."""
    return query if viewer.is_admin else query.where(model.tenant_id == viewer.tenant_id)
