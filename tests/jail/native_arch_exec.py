"""Run a command the way systemd's SystemCallArchitectures=native runs a service: a seccomp
filter, inherited by every child, that kills the process on any syscall that is not native
x86_64 (the i386 audit arch, or an x32 number with bit 30 set).

Usage: python native_arch_exec.py COMMAND [ARG ...]
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ALLOW = 0x7FFF0000
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


PROGRAM = b"".join([
    _insn(BPF_LD_W_ABS, 0, 0, 4),                       # seccomp_data.arch
    _insn(BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
    _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),   # i386 and anything else
    _insn(BPF_LD_W_ABS, 0, 0, 0),                       # seccomp_data.nr
    _insn(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
    _insn(BPF_RET_K, 0, 0, SECCOMP_RET_KILL_PROCESS),   # x32
    _insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
])


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


def main() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    prog = _Fprog(len(PROGRAM) // 8, PROGRAM)
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
