"""A small authoritative DNS server on loopback (UDP, port 0), for tests that go through real sockets.

Answers from a table filled with zone-file lines (what ``mailbridge dns records`` prints, as an
operator would paste them into their zone), so ``NameserverResolver`` (dnspython) is exercised end
to end: wire format, TXT strings split at 255 characters, NXDOMAIN versus NODATA. Written with
dnspython's message API because no DNS server package is a dependency, and only a few lines are
needed: one query, one answer, from a dictionary.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class DnsServer:
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], list[str]] = {}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)
        self.queries: list[tuple[str, str]] = []

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    # ---- the table --------------------------------------------------------------------------------

    def publish(self, zone_text: str) -> int:
        """Add every ``name. IN TYPE rdata`` line of *zone_text* (comments and other lines skipped);
        a TXT or MX already at that name is replaced, as editing a zone does. Returns the count."""
        added: dict[tuple[str, str], list[str]] = {}
        for line in zone_text.splitlines():
            parts = line.split(None, 3)
            if len(parts) < 4 or line.startswith(";") or parts[1].upper() != "IN":
                continue
            name, rtype, rdata = parts[0].rstrip(".").lower(), parts[2].upper(), parts[3]
            dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), rdata)  # must parse
            added.setdefault((name, rtype), []).append(rdata)
        with self._lock:
            self._records.update(added)
        return sum(len(v) for v in added.values())

    def set(self, name: str, rtype: str, rdatas: list[str]) -> None:
        with self._lock:
            self._records[(name.rstrip(".").lower(), rtype.upper())] = list(rdatas)

    def remove(self, name: str, rtype: str) -> None:
        with self._lock:
            self._records.pop((name.rstrip(".").lower(), rtype.upper()), None)

    # ---- serving ----------------------------------------------------------------------------------

    def _answer(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((rtype, name))
            rdatas = list(self._records.get((name, rtype), ()))
            exists = any(key[0] == name for key in self._records)
        if rdatas:
            response.answer.append(dns.rrset.from_text_list(question.name, 300, "IN", rtype, rdatas))
        elif not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not selector.select(timeout=0.05):
                    continue
                wire, peer = self._sock.recvfrom(65535)
                answer = self._answer(wire)
                if answer is not None:
                    self._sock.sendto(answer, peer)

    def start(self) -> DnsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@contextmanager
def dns_server() -> Iterator[DnsServer]:
    server = DnsServer().start()
    try:
        yield server
    finally:
        server.stop()
