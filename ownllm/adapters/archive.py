"""Adapter archives (.tar.gz, .tgz, .tar, .zip): check the adapter inside from its headers,
then extract only its two files.

Every member is checked first: no absolute paths, no `..`, no links or
devices. Then only the one adapter directory's `adapter_config.json` (at most
1 MiB) and the header of its `adapter_model.safetensors` are read, straight
from the archive, and handed to the caller's `check` (rank, shapes against
the base, storage quota), so an adapter is refused before a byte of its
tensors is unpacked. Only those two files are then written, never more than
the sizes the header accounts for. Other members (a README, say) are left in
the archive.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from ownllm.errors import InvalidRequestError, PayloadTooLargeError
from ownllm.formats.peft import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterFormatError,
    AdapterLayout,
    missing_weights,
    parse_config,
    plan_layout,
)
from ownllm.formats.safetensors_header import HeaderError, read_header

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
MAX_CONFIG_BYTES = 1 << 20
MAX_UNPACKED_BYTES = 4 << 30

# (layout, bytes the two files will take) -> None, raising to refuse
Check = Callable[[AdapterLayout, int], None]


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _check_member(name: str) -> None:
    parts = PurePosixPath(name).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise InvalidRequestError(
            f"archive member {name!r} points outside the archive", param="file"
        )


class _Members:
    """The regular files of a zip or tar archive by normalised name, each openable."""

    def __init__(self, archive: Path, stack: ExitStack) -> None:
        self.sizes: dict[str, int] = {}
        self._entries: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}
        self._zip: zipfile.ZipFile | None = None
        if str(archive).lower().endswith(".zip"):
            self._zip = stack.enter_context(zipfile.ZipFile(archive))
            for info in self._zip.infolist():
                _check_member(info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise InvalidRequestError(
                        f"archive member {info.filename!r} is a link", param="file"
                    )
                if not info.is_dir():
                    self._add(info.filename, info, info.file_size)
            return
        self._tar = stack.enter_context(tarfile.open(archive))  # noqa: SIM115 (closed by stack)
        for member in self._tar.getmembers():
            _check_member(member.name)
            if not (member.isfile() or member.isdir()):
                raise InvalidRequestError(
                    f"archive member {member.name!r} is not a regular file", param="file"
                )
            if member.isfile():
                self._add(member.name, member, member.size)

    def _add(self, name: str, entry: zipfile.ZipInfo | tarfile.TarInfo, size: int) -> None:
        name = str(PurePosixPath(name))
        self._entries[name], self.sizes[name] = entry, size

    def open(self, name: str) -> IO[bytes]:
        entry = self._entries[name]
        if self._zip is not None:
            return self._zip.open(entry)
        return self._tar.extractfile(entry)


@contextmanager
def _reading(archive: Path) -> Iterator[_Members]:
    try:
        with ExitStack() as stack:
            yield _Members(archive, stack)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise InvalidRequestError(f"cannot unpack the archive: {e}", param="file") from None


def _adapter_dir(members: _Members) -> PurePosixPath:
    """The one directory in the archive that holds adapter_config.json."""
    found = sorted(
        PurePosixPath(n).parent for n in members.sizes if PurePosixPath(n).name == ADAPTER_CONFIG
    )
    if not found:
        raise InvalidRequestError(f"no {ADAPTER_CONFIG} in the archive", param="file")
    if len(found) > 1:
        raise InvalidRequestError(
            f"the archive holds {len(found)} adapters; import one at a time", param="file"
        )
    return found[0]


def extract_adapter(archive: Path, dest: Path, check: Check) -> Path:
    """Extract the adapter in `archive` into `dest/adapter` once `check` has passed on what
    its config and safetensors header declare; returns that directory."""
    with _reading(archive) as members:
        directory = _adapter_dir(members)
        config_name, weights_name = (
            str(directory / ADAPTER_CONFIG),
            str(directory / ADAPTER_WEIGHTS),
        )
        if weights_name not in members.sizes:
            raise missing_weights(str(directory / "adapter_model.bin") in members.sizes)
        config_size, weights_size = members.sizes[config_name], members.sizes[weights_name]
        if config_size > MAX_CONFIG_BYTES:
            raise AdapterFormatError(f"{ADAPTER_CONFIG} is larger than 1 MiB")
        if config_size + weights_size > MAX_UNPACKED_BYTES:
            raise PayloadTooLargeError("the adapter unpacks to more than 4 GiB", param="file")
        with members.open(config_name) as f:
            config = parse_config(f.read(MAX_CONFIG_BYTES))
        with members.open(weights_name) as f:
            try:
                tensors = read_header(f, weights_size)
            except HeaderError as e:
                raise AdapterFormatError(
                    f"{ADAPTER_WEIGHTS} is corrupted or not safetensors: {e}"
                ) from None
        check(plan_layout(config, tensors), config_size + weights_size)
        out = dest / "adapter"
        out.mkdir(parents=True)
        for name, file in ((config_name, ADAPTER_CONFIG), (weights_name, ADAPTER_WEIGHTS)):
            with members.open(name) as src, open(out / file, "wb") as dst:
                _copy(src, dst, members.sizes[name], name)
        return out


def _copy(src: IO[bytes], dst: IO[bytes], size: int, name: str) -> None:
    """Copy exactly the `size` bytes the archive declares for member `name`."""
    left = size
    while chunk := src.read(min(left + 1, 1 << 20)):
        left -= len(chunk)
        if left < 0:
            raise InvalidRequestError(
                f"archive member {name!r} is longer than it says", param="file"
            )
        dst.write(chunk)
    if left:
        raise InvalidRequestError(f"archive member {name!r} is cut short", param="file")
