"""What the CLI and the HTTP routes do with adapters: import, compose, export.

Each operation checks what the caller may see (another tenant's adapter is
a 404), works in a private temporary directory under the data dir, and
registers its result through `register_adapter`, so a failure leaves no row
and no files behind.

Imports are checked against the served base and the engine's rank limit
from the adapter's header before its tensors are read; archives are
unpacked by `ownllm.adapters.archive`, which checks before it extracts. A
tenant's writes count against its storage quota when one is given.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ownllm.adapters.archive import ARCHIVE_SUFFIXES, extract_adapter, is_archive
from ownllm.adapters.compose import ComposeSpec, compose
from ownllm.adapters.registry import (
    AdapterRecord,
    Viewer,
    get_adapter,
    register_adapter,
    validate_name,
)
from ownllm.errors import InvalidRequestError, PermissionDeniedError
from ownllm.formats.peft import (
    AdapterLayout,
    check_base,
    check_rank,
    read_adapter,
    read_config,
    write_adapter,
)
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database
from ownllm.store.quota import StorageQuota

EXPORT_FORMATS = ("hf", "gguf", "gguf-lora")


@dataclass(frozen=True)
class BaseModel:
    """The served base model adapters are checked against (from PreparedModel)."""

    id: str
    path: Path  # its Hugging Face directory
    sha256: str


def _check_publish(principal: Viewer, is_public: bool) -> None:
    """Publishing to every tenant crosses tenant boundaries: the admin's call."""
    if is_public and not principal.is_admin:
        raise PermissionDeniedError(
            "only the admin can make an adapter public to every tenant", param="is_public"
        )


@contextmanager
def _scratch(data_dir: DataDir, label: str) -> Iterator[Path]:
    path = data_dir.tmp / f"{label}-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def import_adapter(
    db: Database,
    data_dir: DataDir,
    principal: Viewer,
    source: str | Path,
    *,
    name: str,
    base: BaseModel,
    max_rank: int,
    quota: StorageQuota | None = None,
    is_public: bool = False,
) -> AdapterRecord:
    """Import a PEFT adapter directory or archive for `base`; refuse one that does not fit
    it, whose rank is above `max_rank` (engine.max_lora_rank) or that would pass `quota`."""
    validate_name(name)
    _check_publish(principal, is_public)
    source = Path(source)

    def check(layout: AdapterLayout, size_bytes: int) -> None:  # before a tensor is unpacked
        check_rank(layout, max_rank)
        check_base(layout, base.path)
        if quota is not None:
            with db.session() as s:
                quota.check(s, size_bytes)

    with _scratch(data_dir, "import") as scratch:
        if source.is_file() and is_archive(source):
            adapter_dir = extract_adapter(source, scratch, check)
        elif source.is_dir():
            adapter_dir = source
        else:
            raise InvalidRequestError(
                f"{source} is neither an adapter directory nor a "
                f"{'/'.join(ARCHIVE_SUFFIXES)} archive",
                param="file",
            )
        config = read_config(adapter_dir)
        hyperparameters = {
            key: config[key]
            for key in (
                "r",
                "lora_alpha",
                "target_modules",
                "use_rslora",
                "base_model_name_or_path",
            )
            if key in config
        }
        return register_adapter(
            db,
            data_dir,
            adapter_dir,
            name=name,
            tenant_id=principal.tenant_id,
            base_model=base.id,
            base_sha256=base.sha256,
            source="imported",
            hyperparameters=hyperparameters,
            is_public=is_public,
            base_dir=base.path,
            max_rank=max_rank,
            quota=quota,
        )


def compose_adapters(
    db: Database,
    data_dir: DataDir,
    principal: Viewer,
    *,
    name: str,
    adapters: Sequence[tuple[str, float]],
    method: str,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str = "total",
    max_rank: int,
    quota: StorageQuota | None = None,
    is_public: bool = False,
) -> AdapterRecord:
    """Compose registered adapters (by name or id, with weights) into a new registered one,
    refused when its rank (a `cat` adds ranks) is above `max_rank` or it would pass `quota`."""
    validate_name(name)
    _check_publish(principal, is_public)
    spec = ComposeSpec(
        method=method,
        weights=tuple(float(w) for _, w in adapters),
        density=density,
        seed=seed,
        majority_sign_method=majority_sign_method,
    )
    spec.validate(len(adapters))
    parents = [
        get_adapter(db, principal, ref, param=f"adapters[{i}].id")
        for i, (ref, _) in enumerate(adapters)
    ]
    for i, parent in enumerate(parents[1:], start=1):
        if parent.base_sha256 != parents[0].base_sha256:
            raise InvalidRequestError(
                f"adapter {parent.name!r} was made for base {parent.base_model} and "
                f"{parents[0].name!r} for {parents[0].base_model} (different weights): "
                "only adapters of one base model compose",
                param=f"adapters[{i}].id",
            )
    loaded = [read_adapter(data_dir.resolve(p.path)) for p in parents]
    composed = compose(loaded, spec, names=[p.name for p in parents])
    with _scratch(data_dir, "compose") as scratch:
        write_adapter(scratch, composed)
        return register_adapter(
            db,
            data_dir,
            scratch,
            name=name,
            tenant_id=principal.tenant_id,
            base_model=parents[0].base_model,
            base_sha256=parents[0].base_sha256,
            parents=[p.id for p in parents],
            source="composed",
            hyperparameters=spec.to_dict(),
            is_public=is_public,
            max_rank=max_rank,
            quota=quota,
        )


def export_adapter(
    db: Database,
    data_dir: DataDir,
    principal: Viewer,
    ref: str,
    *,
    fmt: str,
    output: str | Path,
    base: BaseModel,
    gguf_type: str = "f16",
) -> Path:
    """Export a registered adapter as `hf` (merged directory), `gguf` (merged file,
    f16 or q8_0) or `gguf-lora` (the adapter) to `output`, which must not exist."""
    from ownllm.adapters import export

    if fmt not in EXPORT_FORMATS:
        raise InvalidRequestError(
            f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}", param="format"
        )
    record = get_adapter(db, principal, ref)
    if record.base_sha256 != base.sha256:
        raise InvalidRequestError(
            f"adapter {record.name!r} was made for base {record.base_model}, but the base "
            f"model here is {base.id} (different weights)",
            param="adapter",
        )
    adapter_dir = data_dir.resolve(record.path)
    if fmt == "hf":
        return export.export_hf(base.path, adapter_dir, output)
    if fmt == "gguf":
        return export.export_gguf(base.path, adapter_dir, output, gguf_type, name=record.name)
    return export.export_gguf_lora(base.path, adapter_dir, output)
