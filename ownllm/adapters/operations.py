"""What the CLI and the HTTP routes do with adapters: import, compose, export.

Each operation checks what the caller may see (another tenant's adapter is
a 404), works in a private temporary directory under the data dir, and
registers its result through `register_adapter`, so a failure leaves no row
and no files behind.

Archives (.tar.gz, .tgz, .tar, .zip) are unpacked with every member checked
first: no absolute paths, no `..`, no links or devices, and a size cap, so an
uploaded archive cannot write outside its directory or fill the disk.
"""

from __future__ import annotations

import shutil
import tarfile
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ownllm.adapters.compose import ComposeSpec, compose
from ownllm.adapters.peft_format import ADAPTER_CONFIG, read_adapter, read_config, write_adapter
from ownllm.adapters.registry import (
    AdapterRecord,
    Viewer,
    get_adapter,
    register_adapter,
    validate_name,
)
from ownllm.errors import InvalidRequestError, PayloadTooLargeError, PermissionDeniedError
from ownllm.store.blobs import DataDir
from ownllm.store.db import Database

MAX_UNPACKED_BYTES = 4 << 30
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
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


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(name: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise InvalidRequestError(
            f"archive member {name!r} points outside the archive", param="file"
        )


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpack a .tar(.gz)/.tgz/.zip adapter archive into `dest`, refusing unsafe members."""
    total = 0
    try:
        if str(archive).lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_member(info.filename)
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        raise InvalidRequestError(
                            f"archive member {info.filename!r} is a link", param="file"
                        )
                    total += info.file_size
                if total > MAX_UNPACKED_BYTES:
                    raise PayloadTooLargeError(
                        "the archive unpacks to more than 4 GiB", param="file"
                    )
                zf.extractall(dest)
            return
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                _check_member(member.name)
                if not (member.isfile() or member.isdir()):
                    raise InvalidRequestError(
                        f"archive member {member.name!r} is not a regular file", param="file"
                    )
                total += member.size
            if total > MAX_UNPACKED_BYTES:
                raise PayloadTooLargeError("the archive unpacks to more than 4 GiB", param="file")
            tf.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise InvalidRequestError(f"cannot unpack the archive: {e}", param="file") from None


def _find_adapter_dir(root: Path) -> Path:
    """The one directory under `root` (itself included) that holds adapter_config.json."""
    found = sorted(p.parent for p in root.rglob(ADAPTER_CONFIG))
    if not found:
        raise InvalidRequestError(f"no {ADAPTER_CONFIG} in the archive", param="file")
    if len(found) > 1:
        raise InvalidRequestError(
            f"the archive holds {len(found)} adapters; import one at a time", param="file"
        )
    return found[0]


def import_adapter(
    db: Database,
    data_dir: DataDir,
    principal: Viewer,
    source: str | Path,
    *,
    name: str,
    base: BaseModel,
    is_public: bool = False,
) -> AdapterRecord:
    """Import a PEFT adapter directory or archive for `base`; refuse one that does not fit it."""
    validate_name(name)
    _check_publish(principal, is_public)
    source = Path(source)
    with _scratch(data_dir, "import") as scratch:
        if source.is_file() and is_archive(source):
            unpack_archive(source, scratch)
            adapter_dir = _find_adapter_dir(scratch)
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
    is_public: bool = False,
) -> AdapterRecord:
    """Compose registered adapters (by name or id, with weights) into a new registered one."""
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
