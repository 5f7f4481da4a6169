"""Vector store requests as pydantic models (OpenAI's field names and bounds).

The nested parts whose errors OpenAI words itself (chunking strategies, filters,
attributes, expires_after) are plain JSON here and checked in `ownllm.vectors`, which
raises a 400 naming the field. `embedding_model` on a new store is an ownllm extension.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ownllm.api.schemas import RankingOptions, _Request

Metadata = dict[str, str]


class CreateVectorStoreRequest(_Request):
    name: str = Field("", max_length=256)
    description: str | None = Field(None, max_length=512)
    file_ids: list[str] = Field(default_factory=list, max_length=500)
    expires_after: dict[str, Any] | None = None
    chunking_strategy: dict[str, Any] | None = None
    metadata: Metadata | None = Field(None, max_length=16)
    embedding_model: str | None = Field(None, max_length=256)


class UpdateVectorStoreRequest(BaseModel):
    """Null clears `expires_after` (OpenAI's meaning), so nulls are kept here."""

    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(None, max_length=256)
    expires_after: dict[str, Any] | None = None
    metadata: Metadata | None = Field(None, max_length=16)


class CreateVectorStoreFileRequest(_Request):
    file_id: str = Field(min_length=1, max_length=64)
    chunking_strategy: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None


class UpdateFileAttributesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    attributes: dict[str, Any] | None


class CreateFileBatchRequest(_Request):
    file_ids: list[str] | None = Field(None, min_length=1, max_length=2000)
    files: list[CreateVectorStoreFileRequest] | None = Field(None, min_length=1, max_length=2000)
    chunking_strategy: dict[str, Any] | None = None
    attributes: dict[str, Any] | None = None


class SearchRequest(_Request):
    query: str | list[str]
    rewrite_query: bool = False
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None
    ranking_options: RankingOptions | None = None
