"""Stored responses (the Responses API's `store`, true by default): save, read, delete.

A stored response is the response object the client received, its request's input
items (with the ids `GET /v1/responses/{id}/input_items` lists), and the conversation
as chat messages — the history it continued, its own input as the model read it (after
the input guard) and its output as the client received it (after the output guard) — so
that a request naming it as `previous_response_id` starts from one row.

Rows are the tenant's: another tenant's response does not exist (404), whether it is
read, deleted, listed or continued; the admin sees every tenant's. They are erased with
the tenant (`ownllm.gateway.purge.purge_tenant`) and by the retention purge.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete

from ownllm.errors import InvalidRequestError
from ownllm.gateway.principal import Principal
from ownllm.store.db import Database
from ownllm.store.schema import StoredResponse
from ownllm.store.tenancy import get_visible


def save_response(
    db: Database,
    principal: Principal,
    response: dict[str, Any],
    input_items: list[dict[str, Any]],
    conversation: list[dict[str, Any]],
) -> None:
    row = StoredResponse(
        id=response["id"],
        tenant_id=principal.tenant_id,
        key_id=principal.key_id,
        model=response["model"],
        created_at=int(response.get("created_at") or time.time()),
        previous_response_id=response.get("previous_response_id"),
        response=response,
        input_items=input_items,
        conversation=conversation,
    )
    with db.session() as session:
        session.merge(row)


def get_response(
    db: Database, principal: Principal, response_id: str, param: str = "response_id"
) -> StoredResponse:
    """The stored response `response_id` of the principal's tenant, else a 404."""
    message = f"Response with id '{response_id}' not found."
    return get_visible(db, StoredResponse, response_id, principal, message, param)


def delete_response(db: Database, principal: Principal, response_id: str) -> None:
    row = get_response(db, principal, response_id)
    with db.session() as session:
        session.execute(delete(StoredResponse).where(StoredResponse.id == row.id))


def input_items_page(
    row: StoredResponse, *, after: str | None, limit: int, order: str
) -> tuple[list[dict[str, Any]], bool]:
    """One page of a stored response's input items (`desc`: the last item first) and
    whether more follow; `after` is the id of the previous page's last item."""
    items = list(row.input_items or [])
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item.get("id") for item in items]
        if after not in ids:
            raise InvalidRequestError(
                f"No input item with id '{after}' in response '{row.id}'.", param="after"
            )
        items = items[ids.index(after) + 1 :]
    return items[:limit], len(items) > limit
