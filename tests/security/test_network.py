"""Network isolation: nothing on the host's loopback (TCP, UDP, IPv4, IPv6, abstract unix
sockets) is reachable from a jail, and the jail has only `lo` with no route. All traffic here
is aimed at this machine's own loopback; nothing is sent off the host."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ._util import jail_json

pytestmark = pytest.mark.jail

CONNECT = r"""
import socket, errno, json, sys
fam = socket.AF_INET6 if sys.argv[1] == 'v6' else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(3)
try:
    s.connect((sys.argv[2], int(sys.argv[3]))); r = 'connected:' + s.recv(16).decode(errors='replace')
except OSError as e:
    r = errno.errorcode.get(e.errno, str(e))
# twin: a listener the jail opens on its own loopback is reachable
srv = socket.socket(fam); srv.bind((sys.argv[2], 0)); srv.listen()
c = socket.create_connection(srv.getsockname()[:2]); a, _ = srv.accept(); c.sendall(b'ok')
print(json.dumps([r, a.recv(2).decode()]))
"""


class HostListener:
    """A TCP listener on the host's loopback that greets whoever connects."""

    def __init__(self, family: int, addr: str) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def accepted(self) -> int:
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1


@pytest.fixture(params=[("v4", "127.0.0.1"), ("v6", "::1")], ids=["ipv4", "ipv6"])
def host_listener(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, HostListener]]:
    kind, addr = request.param
    family = socket.AF_INET6 if kind == "v6" else socket.AF_INET
    try:
        lst = HostListener(family, addr)
    except OSError as exc:
        pytest.skip(f"no {addr} on this host: {exc}")
    yield kind, addr, lst
    lst.sock.close()


async def test_host_loopback_listener_unreachable_from_jail(client: Any,
                                                            host_listener: tuple[str, str, HostListener]) -> None:
    kind, addr, lst = host_listener
    r, twin = await jail_json(client, CONNECT, args=[kind, addr, str(lst.port)])
    assert r == "ECONNREFUSED" and lst.accepted() == 0, r
    assert twin == "ok"
    # control: the listener is really there for the host
    with socket.create_connection((addr, lst.port), timeout=2):
        pass
    got, deadline = 0, time.monotonic() + 10  # poll the accept queue until the handshake lands
    while got < 1 and time.monotonic() < deadline:
        got += lst.accepted()
        await asyncio.sleep(0.01)
    assert got == 1


@pytest.mark.parametrize("addr", ["127.0.0.1", "::1"])
async def test_daemon_port_unreachable_from_jail(client: Any, addr: str) -> None:
    port = client.server.port
    kind = "v6" if ":" in addr else "v4"
    r, twin = await jail_json(client, CONNECT, args=[kind, addr, str(port)])
    assert r == "ECONNREFUSED", r
    assert twin == "ok"
    assert (await client.get("/health")).status == 200


async def test_udp_to_host_loopback_never_arrives(client: Any) -> None:
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.bind(("127.0.0.1", 0))
    host.setblocking(False)
    port = host.getsockname()[1]
    try:
        code = ("import socket, json, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                "for _ in range(20):\n    s.sendto(b'leak', ('127.0.0.1', int(sys.argv[1])))\n"
                "srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(('127.0.0.1', 0))\n"
                "s.sendto(b'twin', srv.getsockname()); print(json.dumps(srv.recv(4).decode()))\n")
        assert await jail_json(client, code, args=[str(port)]) == "twin"
        await asyncio.sleep(0.1)
        with pytest.raises(BlockingIOError):
            host.recv(16)
    finally:
        host.close()


async def test_host_abstract_unix_socket_unreachable(client: Any) -> None:
    name = f"sandboxd-sec-{os.getpid()}-{os.urandom(4).hex()}"
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.bind("\0" + name)
    host.listen(4)
    host.setblocking(False)
    try:
        code = (
            "import socket, errno, json, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "try:\n    s.connect('\\0' + sys.argv[1]); r = 'connected'\n"
            "except OSError as e:\n    r = errno.errorcode[e.errno]\n"
            "own = socket.socket(socket.AF_UNIX); own.bind('\\0' + sys.argv[1]); own.listen()\n"
            "c = socket.socket(socket.AF_UNIX); c.connect('\\0' + sys.argv[1]); a, _ = own.accept()\n"
            "c.sendall(b'ok'); print(json.dumps([r, a.recv(2).decode()]))\n"
        )
        r, twin = await jail_json(client, code, args=[name])
        assert r == "ECONNREFUSED" and twin == "ok"  # the jail could even bind the same name: own namespace
        with pytest.raises(BlockingIOError):
            host.accept()
        # control: the host side is really listening
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.connect("\0" + name)
        probe.close()
    finally:
        host.close()


async def test_only_loopback_interface_and_no_routes(client: Any) -> None:
    code = (
        "import json, socket\n"
        "ifs = sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:])\n"
        "v4 = [l.split()[0] for l in open('/proc/net/route').readlines()[1:]]\n"
        "v6 = [l.split() for l in open('/proc/net/ipv6_route')]\n"
        "v6_devs = sorted({r[-1] for r in v6})\n"
        "v6_default_usable = [r for r in v6 if r[0] == '0' * 32 and r[1] == '00' and r[-1] != 'lo']\n"
        "def idx(n):\n    try:\n        return socket.if_nametoindex(n)\n    except OSError:\n        return None\n"
        "print(json.dumps([ifs, v4, v6_devs, v6_default_usable, [idx(n) for n in ('lo', 'eth0', 'ens3', 'docker0')]]))\n"
    )
    ifs, v4, v6_devs, v6_default, names = await jail_json(client, code)
    assert ifs == ["lo"] and v4 == [] and v6_devs in ([], ["lo"]) and v6_default == []
    assert names[0] is not None and names[1:] == [None, None, None]  # lo exists, host interfaces do not


async def test_name_resolution_has_no_nameserver_but_localhost_resolves(client: Any) -> None:
    code = ("import json, socket\nconf = open('/etc/resolv.conf').read()\n"
            "print(json.dumps(['nameserver' in conf, socket.gethostbyname('localhost'), socket.gethostname()]))\n")
    assert await jail_json(client, code) == [False, "127.0.0.1", "sandbox"]
