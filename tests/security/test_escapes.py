"""Escape attempts from inside the real jail: every call the seccomp policy denies, sockets of
kernel families ordinary programs never need, other syscall ABIs, /proc and /sys writes,
setuid binaries and nested namespaces. Each is paired with a harmless twin that still works.

Arguments are chosen so that, without the filter, the kernel would mostly answer something
other than EPERM (NULL pointers give EFAULT, fd -1 gives EBADF): EPERM is the filter's answer.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import struct
from typing import Any

import pytest

from ._util import assert_daemon_fine, jail_json, run

pytestmark = pytest.mark.jail

SYSCALL_PRELUDE = r"""
import ctypes, errno, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    rv = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return [rv, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if rv == -1 else None]
"""

# name: (x86_64 number, args). CLONE_NEWUSER = 0x10000000, CLONE_NEWNS = 0x00020000, SIGCHLD = 17.
DENIED = {
    "unshare_newuser": (272, 0x10000000),
    "unshare_newns": (272, 0x00020000),
    "unshare_newnet": (272, 0x40000000),
    "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0),
    "clone_newpid": (56, 0x20000000 | 17, 0, 0, 0, 0),
    "setns": (308, -1, 0),
    "mount": (165, 0, 0, 0, 0, 0),
    "umount2": (166, 0, 0),
    "pivot_root": (155, 0, 0),
    "chroot": (161, 0),
    "open_tree": (428, -1, 0, 0),
    "move_mount": (429, -1, 0, -1, 0, 0),
    "fsopen": (430, 0, 0),
    "fsconfig": (431, -1, 0, 0, 0, 0),
    "fsmount": (432, -1, 0, 0),
    "fspick": (433, -1, 0, 0),
    "mount_setattr": (442, -1, 0, 0, 0, 0),
    "ptrace_attach": (101, 16, 1, 0, 0),
    "ptrace_traceme": (101, 0, 0, 0, 0),
    "process_vm_readv": (310, 1, 0, 1, 0, 1, 0),
    "process_vm_writev": (311, 1, 0, 1, 0, 1, 0),
    "kcmp": (312, 1, 1, 0, 0, 0),
    "pidfd_getfd": (438, -1, 0, 0),
    "bpf": (321, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0),
    "userfaultfd": (323, 0),
    "io_uring_setup": (425, 1, 0),
    "io_uring_enter": (426, -1, 0, 0, 0, 0, 0),
    "io_uring_register": (427, -1, 0, 0, 0),
    "add_key": (248, 0, 0, 0, 0, 0),
    "request_key": (249, 0, 0, 0, 0),
    "keyctl": (250, 0, 0, 0, 0, 0),
    "init_module": (175, 0, 0, 0),
    "finit_module": (313, -1, 0, 0),
    "delete_module": (176, 0, 0),
    "kexec_load": (246, 0, 0, 0, 0),
    "kexec_file_load": (320, -1, -1, 0, 0, 0),
    "reboot": (169, 0, 0, 0, 0),
    "swapon": (167, 0, 0),
    "swapoff": (168, 0),
    "settimeofday": (164, 0, 0),
    "clock_settime": (227, 0, 0),
    "clock_adjtime": (305, 0, 0),
    "adjtimex": (159, 0),
    "syslog_read_all": (103, 3, 0, 0),
    "acct": (163, 0),
    "quotactl": (179, 0, 0, 0, 0),
    "lookup_dcookie": (212, 0, 0, 0),
    "name_to_handle_at": (303, -1, 0, 0, 0, 0),
    "open_by_handle_at": (304, -1, 0, 0),
    "personality_read_implies_exec": (135, 0x0400000),
}


@pytest.mark.parametrize("name", sorted(DENIED))
async def test_denied_syscall_returns_eperm(client: Any, name: str) -> None:
    """Each call the policy denies fails with EPERM; the same raw-syscall path still works for
    an allowed call (getpid), so EPERM comes from the policy, not from a broken probe."""
    nr, *args = DENIED[name]
    code = SYSCALL_PRELUDE + (
        f"denied = sc({nr}, *{args!r})\n"
        "twin = sc(39)\n"
        "print(json.dumps({'denied': denied, 'twin': twin[0] == os.getpid()}))\n"
    )
    r = await jail_json(client, code)
    assert r["denied"] == [-1, "EPERM"], r
    assert r["twin"] is True


async def test_clone3_is_enosys_while_threads_and_processes_work(client: Any) -> None:
    code = SYSCALL_PRELUDE + (
        "import threading, subprocess, multiprocessing\n"
        "r = {'clone3': sc(435, 0, 0)}\n"
        "out = []\nts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
        "[t.start() for t in ts]; [t.join() for t in ts]\nr['threads'] = len(out)\n"
        "r['subprocess'] = subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout\n"
        "with multiprocessing.Pool(2) as p:\n    r['pool'] = p.map(abs, [-1, -2, -3])\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r == {"clone3": [-1, "ENOSYS"], "threads": 8, "subprocess": "hi\n", "pool": [1, 2, 3]}


async def test_clone_without_namespace_flags_still_forks(client: Any) -> None:
    """Twin of the clone denials: a plain clone(SIGCHLD) is a fork and works."""
    code = SYSCALL_PRELUDE + (
        "pid = libc.syscall(ctypes.c_long(56), ctypes.c_long(17), ctypes.c_long(0), ctypes.c_long(0),"
        " ctypes.c_long(0), ctypes.c_long(0))\n"
        "if pid == 0:\n    os._exit(7)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(json.dumps([pid > 0, os.waitstatus_to_exitcode(status)]))\n"
    )
    assert await jail_json(client, code) == [True, 7]


async def test_personality_query_and_linux_default_still_allowed(client: Any) -> None:
    code = SYSCALL_PRELUDE + "print(json.dumps([sc(135, 0xffffffff)[0], sc(135, 0)[1]]))\n"
    current, err = await jail_json(client, code)
    assert current == 0 and err is None


SOCKETS = {
    "af_packet_raw": (17, 3),
    "af_netlink_route": (16, 3),
    "af_netlink_audit": (16, 2),
    "af_vsock": (40, 1),
    "af_alg": (38, 5),
    "af_inet_sock_raw": (2, 3),
    "af_inet6_sock_raw": (10, 3),
    "af_inet_seqpacket": (2, 5),
    "af_bluetooth": (31, 1),
    "af_key": (15, 3),
}


@pytest.mark.parametrize("name", sorted(SOCKETS))
async def test_kernel_socket_family_denied(client: Any, name: str) -> None:
    family, kind = SOCKETS[name]
    code = (
        "import socket, errno, json\nr = {}\n"
        f"try:\n    socket.socket({family}, {kind}); r['attack'] = 'created'\n"
        "except OSError as e:\n    r['attack'] = errno.errorcode[e.errno]\n"
        "for fam, typ in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_DGRAM),"
        " (socket.AF_UNIX, socket.SOCK_STREAM)):\n"
        "    socket.socket(fam, typ).close()\n"
        "r['twin'] = 'ok'\nprint(json.dumps(r))\n"
    )
    assert await jail_json(client, code) == {"attack": "EPERM", "twin": "ok"}


# (family, type, protocol) of sockets whose protocol the kernel would load a module for (or
# that only raw access needs); seccomp answers EPERM before the kernel looks the protocol up.
PROTOCOLS = {
    "inet_stream_sctp": (2, 1, 132),
    "inet6_stream_sctp": (10, 1, 132),
    "inet_dgram_l2tp": (2, 2, 115),
    "inet6_dgram_l2tp": (10, 2, 115),
    "inet_dgram_udplite": (2, 2, 136),
    "inet_stream_mptcp": (2, 1, 262),
    "inet_dgram_raw_protocol": (2, 2, 255),
    "inet_dgram_icmp_ping": (2, 2, 1),
    "inet6_dgram_icmpv6_ping": (10, 2, 58),
    "unix_stream_protocol_1": (1, 1, 1),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
async def test_socket_protocol_outside_tcp_udp_is_denied(client: Any, name: str) -> None:
    family, kind, proto = PROTOCOLS[name]
    code = (
        "import socket, errno, json\nr = {}\n"
        f"for key, make in (('socket', socket.socket), ('socketpair', socket.socketpair)):\n"
        "    try:\n"
        f"        made = make({family}, {kind}, {proto}); r[key] = 'created'\n"
        "    except OSError as e:\n        r[key] = errno.errorcode[e.errno]\n"
        "print(json.dumps(r))\n"
    )
    assert await jail_json(client, code) == {"socket": "EPERM", "socketpair": "EPERM"}


async def test_tcp_udp_and_unix_sockets_with_default_or_named_protocol_still_work(client: Any) -> None:
    """Twin of the protocol denials: ordinary loopback traffic inside the jail, with protocol 0
    and with IPPROTO_TCP/IPPROTO_UDP spelled out, over IPv4 and IPv6, and unix sockets."""
    code = (
        "import socket, json\nr = {}\n"
        "for fam, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
        "    for proto_srv, proto_cli in ((0, socket.IPPROTO_TCP), (socket.IPPROTO_TCP, 0)):\n"
        "        srv = socket.socket(fam, socket.SOCK_STREAM, proto_srv); srv.bind((host, 0)); srv.listen(1)\n"
        "        cli = socket.socket(fam, socket.SOCK_STREAM, proto_cli); cli.connect(srv.getsockname()[:2])\n"
        "        conn, _ = srv.accept(); cli.sendall(b'tcp'); r[f'tcp{fam}-{proto_srv}'] = conn.recv(3).decode()\n"
        "        for x in (conn, cli, srv): x.close()\n"
        "    for proto_a, proto_b in ((0, socket.IPPROTO_UDP), (socket.IPPROTO_UDP, 0)):\n"
        "        a = socket.socket(fam, socket.SOCK_DGRAM, proto_a); a.bind((host, 0))\n"
        "        b = socket.socket(fam, socket.SOCK_DGRAM, proto_b); b.sendto(b'udp', a.getsockname()[:2])\n"
        "        r[f'udp{fam}-{proto_a}'] = a.recv(3).decode(); a.close(); b.close()\n"
        "x, y = socket.socketpair(); x.sendall(b'pair'); r['pair'] = y.recv(4).decode()\n"
        "srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0); srv.bind('\\0sandboxd-test'); srv.listen(1)\n"
        "cli = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0); cli.connect('\\0sandboxd-test')\n"
        "conn, _ = srv.accept(); cli.sendall(b'unix'); r['unix'] = conn.recv(4).decode()\n"
        "d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0); d.close()\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r == {"tcp2-0": "tcp", "tcp2-6": "tcp", "tcp10-0": "tcp", "tcp10-6": "tcp",
                 "udp2-0": "udp", "udp2-17": "udp", "udp10-0": "udp", "udp10-17": "udp",
                 "pair": "pair", "unix": "unix"}


async def test_tiocsti_ioctl_denied_other_ioctls_work(client: Any) -> None:
    code = (
        "import fcntl, termios, os, errno, json, array\nr = {}\n"
        "for fd in (0, 1, 2):\n"
        "    try:\n        fcntl.ioctl(fd, termios.TIOCSTI, b'x'); r[fd] = 'injected'\n"
        "    except OSError as e:\n        r[fd] = errno.errorcode[e.errno]\n"
        "a, b = os.pipe(); os.write(b, b'abc'); buf = array.array('i', [0])\n"
        "fcntl.ioctl(a, termios.FIONREAD, buf); r['fionread'] = buf[0]\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r == {"0": "EPERM", "1": "EPERM", "2": "EPERM", "fionread": 3}


async def test_nested_user_namespace_denied_from_the_shell(client: Any) -> None:
    code = ("unshare -Ur id 2>&1; echo \"rc=$?\"\nunshare -n true 2>&1; echo \"rc=$?\"\n"
            "echo twin; id -u; nproc >/dev/null && echo ok")
    body = await run(client, code, lang="bash")
    out = body["stdout"]
    rcs = re.findall(r"rc=(\d+)", out)
    assert len(rcs) == 2 and all(rc != "0" for rc in rcs), out
    assert "uid=0" not in out and "Operation not permitted" in out
    assert out.endswith("twin\n1000\nok\n")


# ---- other syscall ABIs ------------------------------------------------------------------------

_MC_PRELUDE = r"""
import ctypes, mmap, struct, json, os, subprocess, sys
def machine_code(blob):
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(blob)
    fn = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    return fn, page
"""


def _host_has_x32() -> bool:
    """Whether this kernel runs x32 syscalls at all: x32 getpid from the test process."""
    page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(b"\xb8" + struct.pack("<I", 0x40000000 | 39) + b"\x0f\x05\xc3")
    fn = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
    result: bool = fn() == os.getpid()
    del fn
    return result


@pytest.mark.parametrize("call", ["unshare_newuser", "mount"])
async def test_x32_abi_variant_of_a_denied_call_does_not_succeed(client: Any, call: str) -> None:
    """x32 syscall numbers (bit 0x40000000) must not slip past a filter written for x86_64.
    On the kernel these tests were written on (6.18, no CONFIG_X86_X32_ABI) every x32 call is
    ENOSYS even outside any jail; on a kernel with x32 the policy must still answer EPERM or
    kill. Either way: never success."""
    nr, first_arg = {"unshare_newuser": (272, 0x10000000), "mount": (165, 0)}[call]
    # mov eax, 0x40000000|nr; mov edi, first_arg; xor esi, esi; xor edx, edx; syscall; ret
    blob = (b"\xb8" + struct.pack("<I", 0x40000000 | nr) + b"\xbf" + struct.pack("<I", first_arg)
            + b"\x31\xf6\x31\xd2\x0f\x05\xc3")
    code = _MC_PRELUDE + (
        "probe = r'''\n" + _MC_PRELUDE + f"fn, page = machine_code({blob!r})\nprint(fn())\n'''\n"
        "p = subprocess.run([sys.executable, '-c', probe], capture_output=True, text=True)\n"
        # twin: the native x86_64 getpid through the same machine-code path
        "fn, page = machine_code(b'\\xb8' + struct.pack('<I', 39) + b'\\x0f\\x05\\xc3')\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout.strip(), 'twin': fn() == os.getpid()}))\n"
    )
    r = await jail_json(client, code)
    assert r["twin"] is True
    killed = r["rc"] < 0
    assert killed or r["out"] in (str(-38), str(-1)), f"x32 {call} returned {r} (host x32: {_host_has_x32()})"


async def test_i386_int80_variant_of_a_denied_call_does_not_succeed(client: Any) -> None:
    """The i386 ABI (int 0x80) has its own syscall numbers a filter for x86_64 must not miss.
    Observed here: the jail's filter kills the process with SIGSYS on any foreign-arch call,
    while the host itself runs int 0x80 calls (ia32 emulation is on)."""
    # push rbx; mov eax, 310 (i386 unshare); mov ebx, CLONE_NEWUSER; int 0x80; pop rbx; ret
    unshare = b"\x53\xb8" + struct.pack("<I", 310) + b"\xbb" + struct.pack("<I", 0x10000000) + b"\xcd\x80\x5b\xc3"
    getpid = b"\xb8" + struct.pack("<I", 20) + b"\xcd\x80\xc3"
    code = _MC_PRELUDE + (
        "res = {}\n"
        f"for name, blob in (('unshare', {unshare!r}), ('getpid', {getpid!r})):\n"
        "    probe = r'''\n" + _MC_PRELUDE + "import sys\nfn, page = machine_code(eval(sys.argv[1]))\nprint(fn())\n'''\n"
        "    p = subprocess.run([sys.executable, '-c', probe, repr(blob)], capture_output=True, text=True)\n"
        "    res[name] = [p.returncode, p.stdout.strip()]\n"
        "fn, page = machine_code(b'\\xb8' + struct.pack('<I', 39) + b'\\x0f\\x05\\xc3')\n"
        "res['twin'] = fn() == os.getpid()\n"
        "print(json.dumps(res))\n"
    )
    r = await jail_json(client, code)
    assert r["twin"] is True
    rc, out = r["unshare"]
    assert rc < 0 or (out.lstrip("-").isdigit() and int(out) < 0), r
    assert r["unshare"] != [0, "0"]


# ---- /proc, /sys, privileges -------------------------------------------------------------------

PROC_WRITES = ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/hostname", "/proc/sys/vm/drop_caches",
               "/proc/self/attr/current", "/proc/self/attr/exec", "/proc/self/oom_score_adj",
               "/proc/self/uid_map", "/proc/self/setgroups", "/proc/self/mem", "/proc/sysrq-trigger",
               "/sys/kernel/uevent_helper", "/sys/fs/cgroup/cgroup.procs"]


@pytest.mark.parametrize("path", PROC_WRITES)
async def test_proc_and_sys_writes_fail(client: Any, path: str) -> None:
    code = (
        "import errno, json\nr = {}\n"
        f"try:\n    open({path!r}, 'wb', buffering=0).write(b'1'); r['attack'] = 'written'\n"
        "except OSError as e:\n    r['attack'] = errno.errorcode[e.errno]\n"
        "r['twin'] = open('/proc/self/status').read().count('Pid:') >= 1\n"
        "open('/mnt/data/ordinary.txt', 'w').write('fine'); r['file'] = open('/mnt/data/ordinary.txt').read()\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r["attack"] in ("EROFS", "EACCES", "EPERM", "ENOENT"), r
    assert r["twin"] is True and r["file"] == "fine"


async def test_sys_is_absent_and_proc_is_read_only(client: Any) -> None:
    code = ("import os, json\nmi = [l.split() for l in open('/proc/self/mountinfo')]\n"
            "proc = [l for l in mi if l[4] == '/proc']\n"
            "print(json.dumps([os.path.exists('/sys'), proc[0][5].split(',')[0], os.path.exists('/proc/self/status')]))\n")
    assert await jail_json(client, code) == [False, "ro", True]


async def test_no_new_privs_and_setuid_binaries_give_no_root(client: Any) -> None:
    """no_new_privs is on and /usr is nosuid: a setuid-root su runs with the jail's own uid."""
    code = (
        "import os, subprocess, time, json\n"
        "r = {'nnp': [l.split()[1] for l in open('/proc/self/status') if l.startswith('NoNewPrivs')][0]}\n"
        "r['suid_bit'] = bool(os.stat('/usr/bin/su').st_mode & 0o4000)\n"
        "p = subprocess.Popen(['/usr/bin/su', '-c', 'id'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,"
        " stderr=subprocess.PIPE)\n"
        "uids = None\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        if os.readlink(f'/proc/{p.pid}/exe') == '/usr/bin/su':\n"
        "            uids = [l.split()[1:] for l in open(f'/proc/{p.pid}/status') if l.startswith('Uid')][0]\n"
        "            break\n"
        "    except OSError:\n        pass\n"
        "    time.sleep(0.005)\n"
        "p.kill(); p.communicate()\n"
        "r['su_uids'] = uids\n"
        "r['twin'] = subprocess.run(['id', '-u'], capture_output=True, text=True).stdout.strip()\n"
        "print(json.dumps(r))\n"
    )
    r = await jail_json(client, code)
    assert r["nnp"] == "1"
    if not r["suid_bit"]:
        pytest.skip("no setuid su on this host")
    assert r["su_uids"] == ["1000"] * 4, r
    assert r["twin"] == "1000"


async def test_planted_setuid_file_in_session_is_inert(client: Any) -> None:
    """The session tmpfs is nosuid: chmod u+s on one's own copy of a binary grants nothing."""
    code = (
        "import os, shutil, subprocess, json\n"
        "shutil.copy('/usr/bin/id', 'myid'); os.chmod('myid', 0o4755)\n"
        "opts = [l.split()[5] for l in open('/proc/self/mountinfo') if l.split()[4] == '/mnt/data'][0]\n"
        "print(json.dumps([bool(os.stat('myid').st_mode & 0o4000), 'nosuid' in opts,"
        " subprocess.run(['./myid', '-u'], capture_output=True, text=True).stdout.strip()]))\n"
    )
    assert await jail_json(client, code) == [True, True, "1000"]


async def test_mknod_of_a_device_is_refused_fifo_allowed(client: Any) -> None:
    code = (
        "import os, stat, errno, json\nr = {}\n"
        "try:\n    os.mknod('sda', 0o600 | stat.S_IFBLK, os.makedev(8, 0)); r['blk'] = 'made'\n"
        "except OSError as e:\n    r['blk'] = errno.errorcode[e.errno]\n"
        "try:\n    os.mknod('mem', 0o600 | stat.S_IFCHR, os.makedev(1, 1)); r['chr'] = 'made'\n"
        "except OSError as e:\n    r['chr'] = errno.errorcode[e.errno]\n"
        "os.mkfifo('fifo'); r['fifo'] = stat.S_ISFIFO(os.stat('fifo').st_mode)\n"
        "print(json.dumps(r))\n"
    )
    assert await jail_json(client, code) == {"blk": "EPERM", "chr": "EPERM", "fifo": True}


async def test_capabilities_are_empty(client: Any) -> None:
    code = ("import json\ncaps = {l.split(':')[0]: l.split()[1] for l in open('/proc/self/status')"
            " if l.startswith('Cap')}\nprint(json.dumps(caps))\n")
    caps = await jail_json(client, code)
    for key in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(caps[key], 16) == 0, caps
    assert int(caps["CapBnd"], 16) == 0 or caps["CapEff"] == "0000000000000000"


async def test_seccomp_filter_is_active_and_inherited_by_children(client: Any) -> None:
    code = SYSCALL_PRELUDE + (
        "import subprocess, sys\n"
        "child = subprocess.run([sys.executable, '-c', 'import ctypes; l = ctypes.CDLL(None, use_errno=True);"
        " print(l.unshare(0x10000000), ctypes.get_errno())'], capture_output=True, text=True).stdout.split()\n"
        "mode = [l.split()[1] for l in open('/proc/self/status') if l.startswith('Seccomp:')][0]\n"
        "print(json.dumps([mode, child]))\n"
    )
    assert await jail_json(client, code) == ["2", ["-1", "1"]]
    await assert_daemon_fine(client)


async def test_signals_reach_only_the_jails_own_processes(client: Any) -> None:
    """kill(-1) and kill(<host pid>) from inside touch nothing outside the jail's pid namespace:
    the daemon (this process) and a host process of the test survive."""
    import subprocess
    import time
    host = subprocess.Popen(["sleep", "30"])
    try:
        code = (
            "import os, signal, errno, json, sys, subprocess\nr = {}\n"
            "child = subprocess.Popen(['sleep', '30'])\n"
            "for name, pid in (('daemon', int(sys.argv[1])), ('host_sleep', int(sys.argv[2]))):\n"
            "    try:\n        os.kill(pid, signal.SIGKILL); r[name] = 'sent'\n"
            "    except OSError as e:\n        r[name] = errno.errorcode[e.errno]\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "os.kill(-1, signal.SIGKILL)\n"
            "r['own_child'] = child.wait()\n"
            "print(json.dumps(r))\n"
        )
        r = await jail_json(client, code, args=[str(os.getpid()), str(host.pid)])
        assert r["own_child"] == -9  # twin: its own child was killed by kill(-1)
        assert r["daemon"] in ("ESRCH", "EPERM") and r["host_sleep"] in ("ESRCH", "EPERM"), r
        time.sleep(0.1)
        assert host.poll() is None
    finally:
        host.kill()
        host.wait()
    await assert_daemon_fine(client)
