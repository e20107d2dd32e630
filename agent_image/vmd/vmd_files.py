"""vmd's file operations, run in worker threads as the VM's user. Each returns (result, payload) or
raises FileOpError(code, message) with a message fit for a user."""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
import zipfile
from typing import Any

from vmd_sys import write_atomic

WORKSPACE = os.environ.get("VMD_WORKSPACE", "/workspace")
UMASK = os.umask(0o022)
os.umask(UMASK)
MAX_ENTRIES = 5000


class FileOpError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _TooLarge(Exception):
    pass


def resolve(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise FileOpError("bad_request", "A path is required.")
    return os.path.normpath(os.path.join(WORKSPACE, os.path.expanduser(path)))


def translate(exc: OSError, path: str) -> FileOpError:
    if isinstance(exc, FileNotFoundError):
        return FileOpError("not_found", f"{path} does not exist in the VM.")
    if isinstance(exc, IsADirectoryError):
        return FileOpError("is_dir", f"{path} is a directory.")
    if isinstance(exc, NotADirectoryError):
        return FileOpError("not_dir", f"A part of {path} is not a directory.")
    if isinstance(exc, PermissionError):
        return FileOpError("denied", f"Permission denied for {path}.")
    return FileOpError("io_error", f"{path}: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_ISDIR(mode):
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _entry(name: str, st: os.stat_result) -> dict[str, Any]:
    return {"name": name, "type": _kind(st.st_mode), "size": st.st_size, "mtime": st.st_mtime}


def read(req: dict[str, Any], _payload: bytes) -> tuple[dict[str, Any], bytes]:
    path, limit = resolve(req.get("path")), int(req.get("max", 1 << 20))
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise FileOpError("is_dir", f"{path} is a directory.")
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):
            raise FileOpError("not_file", f"{path} is a pipe or socket, not a file.")
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise FileOpError("too_large", f"{path} is {st.st_size:,} bytes, over the limit of {limit:,}.")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise translate(exc, path) from exc
    if len(data) > limit:
        raise FileOpError("too_large", f"{path} is over the limit of {limit:,} bytes.")
    return {"size": len(data), "path": path}, data


def write(req: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    path, mode = resolve(req.get("path")), req.get("mode")
    if isinstance(mode, str):
        mode = int(mode, 8)
    try:
        if os.path.isdir(path):
            raise FileOpError("is_dir", f"{path} is a directory.")
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        if mode is None:
            try:
                mode = stat.S_IMODE(os.stat(path).st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~UMASK
        write_atomic(path, payload, mode=mode)
    except FileExistsError as exc:
        raise FileOpError("not_dir", f"A part of {path} is not a directory.") from exc
    except OSError as exc:
        raise translate(exc, path) from exc
    return {"size": len(payload), "path": path}, b""


def list_dir(req: dict[str, Any], _payload: bytes) -> tuple[dict[str, Any], bytes]:
    path = resolve(req.get("path") or ".")
    entries = []
    try:
        with os.scandir(path) as it:
            for e in it:
                try:
                    entries.append(_entry(e.name, e.stat(follow_symlinks=False)))
                except OSError:
                    continue
    except OSError as exc:
        raise translate(exc, path) from exc
    entries.sort(key=lambda e: e["name"])
    return {"path": path, "entries": entries[:MAX_ENTRIES], "truncated": len(entries) > MAX_ENTRIES}, b""


def stat_path(req: dict[str, Any], _payload: bytes) -> tuple[dict[str, Any], bytes]:
    path = resolve(req.get("path"))
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise translate(exc, path) from exc
    return {**_entry(os.path.basename(path) or "/", st), "path": path}, b""


class _CappedBuffer(io.BytesIO):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + len(data) > self.limit:
            raise _TooLarge()
        return super().write(data)


def archive_out(req: dict[str, Any], _payload: bytes) -> tuple[dict[str, Any], bytes]:
    path, fmt, limit = resolve(req.get("path")), req.get("format", "tar"), int(req.get("max", 1 << 20))
    if fmt not in ("tar", "zip"):
        raise FileOpError("bad_request", f"Unknown archive format {fmt!r} (tar or zip).")
    buf = _CappedBuffer(limit)
    try:
        os.lstat(path)
        if fmt == "tar":
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(path, arcname=os.path.basename(path) or "root")
        else:
            _zip(buf, path)
    except _TooLarge as exc:
        raise FileOpError("too_large", f"The archive of {path} is over the limit of {limit:,} bytes.") from exc
    except OSError as exc:
        raise translate(exc, path) from exc
    data = buf.getvalue()
    return {"size": len(data), "path": path, "format": fmt}, data


def _zip(buf: io.BytesIO, path: str) -> None:
    top = os.path.basename(path) or "root"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        if not os.path.isdir(path):
            zf.write(path, top)
            return
        for root, dirs, files in os.walk(path):
            rel = os.path.relpath(root, path)
            base = top if rel == "." else f"{top}/{rel}"
            zf.write(root, base + "/")
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            for name in files:
                full = os.path.join(root, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    zf.write(full, f"{base}/{name}")


def _unsafe(member: str, why: str) -> FileOpError:
    return FileOpError("unsafe_archive", f"Refused the archive: member {member!r} {why}. Nothing was extracted.")


def _check_members(members: list[tarfile.TarInfo], dest_real: str) -> list[tuple[tarfile.TarInfo, str]]:
    """Lexical and on-disk checks of every member before anything is written."""
    checked: list[tuple[tarfile.TarInfo, str]] = []
    links: set[str] = set()
    for m in members:
        name = m.name
        if posixpath.isabs(name):
            raise _unsafe(m.name, "has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise _unsafe(m.name, "contains a '..' component")
        if not parts:
            continue
        rel = "/".join(parts)
        if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise _unsafe(m.name, "is a device, fifo or other special file")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in links:
                raise _unsafe(m.name, "goes through a symlink in the archive")
        target = os.path.join(dest_real, rel)
        if not _inside(os.path.realpath(os.path.dirname(target)), dest_real):
            raise _unsafe(m.name, "would be written outside the destination (through an existing symlink)")
        if m.issym() or m.islnk():
            _check_link(m, rel, dest_real, links)
        checked.append((m, rel))
    return checked


def _check_link(m: tarfile.TarInfo, rel: str, dest_real: str, links: set[str]) -> None:
    link = m.linkname
    if not link or posixpath.isabs(link):
        raise _unsafe(m.name, f"is a link to the absolute path {link!r}")
    base = posixpath.dirname(rel) if m.issym() else ""
    joined = posixpath.normpath(posixpath.join(base, link))
    if joined == ".." or joined.startswith("../"):
        raise _unsafe(m.name, f"is a link whose target {link!r} escapes the destination")
    jparts = joined.split("/")
    if any("/".join(jparts[:i]) in links for i in range(1, len(jparts) + 1)) and m.issym():
        raise _unsafe(m.name, "is a link through another symlink in the archive")
    if not _inside(os.path.realpath(os.path.join(dest_real, joined)), dest_real):
        raise _unsafe(m.name, f"is a link whose target {link!r} escapes the destination")
    if m.issym():
        links.add(rel)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def archive_in(req: dict[str, Any], payload: bytes) -> tuple[dict[str, Any], bytes]:
    dest = resolve(req.get("path") or ".")
    if req.get("format", "tar") != "tar":
        raise FileOpError("bad_request", "Only tar archives can be extracted.")
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
            members = tar.getmembers()
            os.makedirs(dest, exist_ok=True)
            dest_real = os.path.realpath(dest)
            checked = _check_members(members, dest_real)
            for m, rel in checked:
                _extract(tar, m, rel, dest_real)
    except (tarfile.TarError, EOFError) as exc:
        raise FileOpError("bad_archive", f"The upload is not a readable tar archive: {exc}") from exc
    except FileExistsError as exc:
        raise FileOpError("not_dir", f"{exc.filename} is in the way of the archive.") from exc
    except OSError as exc:
        raise translate(exc, dest) from exc
    return {"members": len(checked), "path": dest}, b""


def _extract(tar: tarfile.TarFile, m: tarfile.TarInfo, rel: str, dest_real: str) -> None:
    target = os.path.join(dest_real, rel)
    parent = os.path.dirname(target)
    if not _inside(os.path.realpath(parent), dest_real):  # belt and braces, after earlier members
        raise _unsafe(m.name, "would be written outside the destination")
    if m.isdir():
        os.makedirs(target, exist_ok=True)
        os.chmod(target, (m.mode & 0o777) | 0o700)
        return
    os.makedirs(parent, exist_ok=True)
    if os.path.lexists(target) and not os.path.isdir(target) or os.path.islink(target):
        os.unlink(target)
    if m.issym():
        os.symlink(m.linkname, target)
    elif m.islnk():
        os.link(os.path.join(dest_real, posixpath.normpath(m.linkname)), target)
    else:
        src = tar.extractfile(m)
        data = src.read() if src else b""
        write_atomic(target, data, mode=m.mode & 0o777)
        os.utime(target, (m.mtime, m.mtime))
