"""Per-session storage: a tmpfs per session, and file access that a hostile jail cannot steer.

The jail controls every byte and every name under its /mnt/data and can race the daemon, so:
every path is resolved component by component relative to the session's directory fd with
O_NOFOLLOW; every decision is made on fstat of the fd actually opened (never on a path checked
earlier); only regular files with a single link are read; opens use O_NONBLOCK so a FIFO
cannot block the daemon; walks are bounded in entries and depth.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
from typing import Literal, NamedTuple

from .errors import BadRequest, ConfigError, NotFound, PayloadTooLarge

__all__ = [
    "Sig",
    "mount_tmpfs",
    "unmount",
    "mounted_under",
    "validate_name",
    "open_dir",
    "create_file",
    "open_regular",
    "walk",
    "probe",
    "copy_into",
    "unlink_name",
    "usage_bytes",
]

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 1024
PATH_MAX_DEPTH = 16
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_OPEN_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class Sig(NamedTuple):
    """What identifies one version of a file. ctime cannot be set from user space, so a jail
    that rewrites a file and restores its mtime still changes the signature."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Sig:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def mount_tmpfs(path: str, size_bytes: int, inodes: int, uid: int, gid: int, mode: int = 0o700) -> None:
    # nosuid,nodev: a jail that plants a setuid binary or device node gains nothing.
    opts = f"size={size_bytes},nr_inodes={inodes},mode={mode:04o},uid={uid},gid={gid}".encode()
    if _libc.mount(b"sandboxd", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0:
        err = ctypes.get_errno()
        raise ConfigError(f"cannot mount tmpfs at {path}: {os.strerror(err)}")


def unmount(path: str) -> None:
    if _libc.umount2(path.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):
            raise OSError(err, os.strerror(err), path)


def mounted_under(prefix: str) -> list[str]:
    """Mount points below `prefix` (deepest first), from this mount namespace's mountinfo."""
    prefix = prefix.rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def validate_name(name: str) -> tuple[str, ...]:
    """A client- or jail-supplied relative path, as checked components. Raises BadRequest."""
    if not isinstance(name, str) or not name:
        raise BadRequest("file name must be a non-empty string")
    try:
        encoded = name.encode("utf-8")  # strict: a jail's non-UTF-8 bytes (surrogates) are refused
    except UnicodeEncodeError:
        raise BadRequest("file name is not valid UTF-8") from None
    if len(encoded) > PATH_MAX_BYTES:
        raise BadRequest("file name is too long")
    if name.startswith("/") or "\\" in name:
        raise BadRequest("file name must be a relative path")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise BadRequest("file name contains control characters")
    parts = tuple(p for p in name.split("/") if p)
    if not parts or len(parts) > PATH_MAX_DEPTH:
        raise BadRequest("file name has too many or no components")
    for part in parts:
        if part in (".", "..") or len(part.encode("utf-8")) > NAME_MAX_BYTES:
            raise BadRequest("file name has an invalid component")
    return parts


def open_dir(root_fd: int, parts: tuple[str, ...], create_uid: int | None = None) -> int:
    """Open the directory `parts` below root_fd without following links; with create_uid,
    create missing components owned by that uid. Returns a new fd the caller closes."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = os.open(part, _OPEN_DIR, dir_fd=fd)
            except FileNotFoundError:
                if create_uid is None:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _OPEN_DIR, dir_fd=fd)
                os.fchown(nxt, create_uid, create_uid)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def create_file(root_fd: int, parts: tuple[str, ...], uid: int, replace: bool = False) -> int:
    """Create a new file (never through a link, never an existing one unless replace)."""
    try:
        parent = open_dir(root_fd, parts[:-1], create_uid=uid)
    except (NotADirectoryError, OSError) as exc:
        raise BadRequest(f"cannot create {'/'.join(parts)}: {exc.strerror}") from exc
    try:
        if replace:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    raise BadRequest(f"{'/'.join(parts)} is a directory")
                os.unlink(parts[-1], dir_fd=parent)
            except FileNotFoundError:
                pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(parts[-1], flags, 0o644, dir_fd=parent)
        except FileExistsError as exc:
            raise BadRequest(f"{'/'.join(parts)} already exists") from exc
        os.fchown(fd, uid, uid)
        return fd
    finally:
        os.close(parent)


def open_regular(root_fd: int, parts: tuple[str, ...], max_bytes: int) -> tuple[int, os.stat_result]:
    """Open a file for reading only if it is, by fstat of the opened fd, a regular file with
    one link and at most max_bytes. Anything else is NotFound (never its link target)."""
    try:
        parent = open_dir(root_fd, parts[:-1])
    except OSError as exc:
        raise NotFound() from exc
    try:
        fd = os.open(parts[-1], _OPEN_READ, dir_fd=parent)
    except OSError as exc:  # ELOOP for a symlink, ENXIO for a FIFO without writer, ...
        raise NotFound() from exc
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_size > max_bytes:
        os.close(fd)
        raise NotFound()
    return fd, st


def walk(root_fd: int, max_entries: int, max_file_bytes: int) -> dict[str, Sig]:
    """Regular single-link files below root_fd (relative names -> signatures).

    Skips hidden names, symlinks, special files and files over max_file_bytes; stops after
    max_entries directory entries so 100k files cannot stall the daemon."""
    found: dict[str, Sig] = {}
    budget = [max_entries]
    _walk_into(root_fd, "", 0, found, budget, max_file_bytes)
    return found


def _walk_into(dir_fd: int, prefix: str, depth: int, found: dict[str, Sig], budget: list[int], cap: int) -> None:
    if depth >= PATH_MAX_DEPTH:
        return
    try:
        names = sorted(os.listdir(dir_fd))
    except OSError:
        return
    for name in names:
        if budget[0] <= 0:
            return
        budget[0] -= 1
        if name.startswith("."):
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        rel = prefix + name
        if stat.S_ISDIR(st.st_mode):
            try:
                sub = os.open(name, _OPEN_DIR, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                _walk_into(sub, rel + "/", depth + 1, found, budget, cap)
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size <= cap:
            try:
                validate_name(rel)
            except BadRequest:
                continue
            found[rel] = Sig.of(st)


def probe(root_fd: int, parts: tuple[str, ...], max_file_bytes: int) -> Sig | Literal["absent", "unservable"]:
    """One name looked up on its own (never following a link): its signature if it is a file
    the daemon would serve, "absent" if lstat finds nothing there, else "unservable"."""
    try:
        parent = open_dir(root_fd, parts[:-1])
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except OSError:  # ELOOP: a parent became a link; the name does not resolve to a file here
        return "absent"
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    except OSError:
        return "unservable"
    finally:
        os.close(parent)
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size <= max_file_bytes:
        return Sig.of(st)
    return "unservable"


def copy_into(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy exactly `size` bytes (the size fstat reported when src was opened)."""
    offset = 0
    while offset < size:
        # In-kernel copy; copy_file_range refuses to cross mounts (EXDEV), sendfile does not.
        n = os.sendfile(dst_fd, src_fd, offset, size - offset)
        if n == 0:
            break  # the source shrank underneath us: keep what was there
        offset += n


def write_stream_chunk(fd: int, data: bytes, written: int, limit: int) -> int:
    """Append a chunk of an upload, refusing to grow past `limit` bytes."""
    if written + len(data) > limit:
        raise PayloadTooLarge(f"file exceeds the upload limit of {limit} bytes")
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise PayloadTooLarge("the upload does not fit in the session's storage") from None
        raise
    return written + len(data)


def unlink_name(root_fd: int, parts: tuple[str, ...]) -> None:
    try:
        parent = open_dir(root_fd, parts[:-1])
    except OSError:
        return
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(parts[-1], dir_fd=parent)
    except FileNotFoundError:
        pass
    finally:
        os.close(parent)


def usage_bytes(path: str) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize
