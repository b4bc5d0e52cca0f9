"""``smtp_processes``: several SMTP processes on one port, supervised, counted, gone with their parent.

Runs ``mailbridge serve`` as a real process (tests.test_faults.ServeProcess) with two SMTP
processes on SQLite: every reply is posted once whichever process took it, /metrics adds the
children's counts to the parent's, a killed child is replaced, and a parent killed by SIGKILL does
not leave a child listening on the port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import func, select

from mailbridge import observability
from mailbridge.domain.models import Outbox, OutboxKind, OutboxState
from tests.conftest import API_KEY, make_services, seed
from tests.mailhelpers import open_conversation, reply_address
from tests.sink import Sink
from tests.test_faults import (
    Burst,
    LoopbackDns,
    Remote,
    ServeProcess,
    burst_messages,
    posted_numbers,
    wait_until,
)


def children_of(pid: int) -> set[int]:
    """Live SMTP processes whose parent is *pid*, read from /proc (multiprocessing's resource
    tracker is a child too: it is not one of ours)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != pid or fields[0] == "Z":
            continue
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def posted_in_metrics(http_port: int) -> float:
    request = urllib.request.Request(
        f"http://127.0.0.1:{http_port}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("mailbridge_inbound_total{") and 'state="posted"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def sqlite_world(tmp_path: Path) -> tuple[Any, str, str, str]:
    """The tests' practice on a SQLite file `mailbridge serve` opens too; a conversation with alice."""
    database_url = f"sqlite:///{tmp_path / 'mailbridge.db'}"
    services = make_services(tmp_path, database_url)
    seed(services)
    conversation = open_conversation(services)
    return services, database_url, conversation, reply_address(services, conversation, "alice")


def test_two_smtp_processes_post_once_count_together_and_die_with_their_parent(tmp_path: Path) -> None:
    services, database_url, conversation, address = sqlite_world(tmp_path)
    messages = burst_messages(address, 80)
    with LoopbackDns({"client.test": "v=spf1 ip4:127.0.0.1 -all"}) as dns_server:
        serve = ServeProcess(
            tmp_path / "var", database_url, dns_server.port, extra_env={"MAILBRIDGE_SMTP_PROCESSES": "2"}
        )
        try:
            serve.start()
            assert serve.proc is not None
            wait_until(lambda: len(children_of(serve.proc.pid)) >= 1, 30, "the second SMTP process")
            # Every connection is new, so the kernel spreads them over both listeners.
            burst = Burst(Remote(serve.smtp_port), messages, address, threads=6)
            burst.run(list(messages)[:60])
            assert {code for code, _ in burst.answers.values()} == {250}, burst.answers
            assert sorted(posted_numbers(services, conversation)) == list(range(60))
            # Children report every 2 s; the parent's /metrics adds them to its own counts.
            wait_until(lambda: posted_in_metrics(serve.http_port) == 60, 15, "60 posts in /metrics")

            # A child killed on its own is replaced, and mail keeps flowing.
            (child,) = children_of(serve.proc.pid)
            os.kill(child, signal.SIGKILL)  # a process this test's server started
            wait_until(lambda: bool(children_of(serve.proc.pid) - {child}), 30, "a replacement SMTP process")
            burst = Burst(Remote(serve.smtp_port), messages, address, threads=6)
            burst.run(list(messages)[60:])
            assert {code for code, _ in burst.answers.values()} == {250}, burst.answers

            # The parent killed outright: its child sees the pipe close and stops listening too.
            (child,) = children_of(serve.proc.pid)
            serve.kill9()
            wait_until(lambda: not alive(child), 30, "the SMTP child to exit after its parent")
            assert not listening(serve.smtp_port)
        finally:
            serve.stop()
    services.engine.dispose()
    assert sorted(posted_numbers(services, conversation)) == list(range(80))
    services.close()


def test_every_smtp_process_delivers_notifications_and_none_goes_out_twice(tmp_path: Path) -> None:
    """Each process runs a worker on the shared outbox: 40 replies, 40 notifications, each sent once."""
    services, database_url, _, address = sqlite_world(tmp_path)
    messages = burst_messages(address, 40)
    with LoopbackDns({"client.test": "v=spf1 ip4:127.0.0.1 -all"}) as dns_server, Sink() as sink:
        env = {
            "MAILBRIDGE_SMTP_PROCESSES": "2",
            "MAILBRIDGE_SMARTHOST": f"127.0.0.1:{sink.port}",
            "MAILBRIDGE_SMARTHOST_STARTTLS": "off",
            "MAILBRIDGE_OUTBOX_POLL_SECONDS": "0.1",
        }
        serve = ServeProcess(tmp_path / "var", database_url, dns_server.port, extra_env=env, worker=True)
        try:
            serve.start()
            burst = Burst(Remote(serve.smtp_port), messages, address, threads=6)
            burst.run(list(messages))
            assert {code for code, _ in burst.answers.values()} == {250}, burst.answers
            with services.sessions() as session:  # written with each message, before its 250
                expected = session.scalar(select(func.count()).where(Outbox.kind == OutboxKind.notification))
            assert expected and expected >= 40
            wait_until(lambda: len(sink.received) >= expected, 60, "every notification at the sink")
            time.sleep(1.0)  # a duplicate, if any, would arrive now
        finally:
            serve.stop()
    message_ids = [
        line
        for mail in sink.received
        for line in mail.data.split(b"\r\n")
        if line.lower().startswith(b"message-id:")
    ]
    services.engine.dispose()
    with services.sessions() as session:
        rows = session.scalars(select(Outbox.state).where(Outbox.kind == OutboxKind.notification)).all()
    assert len(rows) == expected and set(rows) == {OutboxState.sent}
    assert len(message_ids) == len(set(message_ids)) == len(rows), "one email per outbox row"
    services.close()


def test_metrics_add_each_childs_counts_label_set_by_label_set() -> None:
    observability.INBOUND.labels("posted", "posted").inc()
    mine = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in observability.REGISTRY.collect()
        for s in family.samples
    }
    key = ("mailbridge_inbound_total", (("reason", "posted"), ("state", "posted")))
    new_key = ("mailbridge_inbound_total", (("reason", "spf_fail"), ("state", "rejected")))
    observability.CHILD_SAMPLES.update(
        {
            1: [("mailbridge_inbound", *key, 5.0), ("mailbridge_inbound", *new_key, 2.0)],
            2: [("mailbridge_inbound", *key, 7.0)],
        }
    )
    try:
        node = CollectorRegistry()
        node.register(observability._NodeTotals())
        exposed = generate_latest(node).decode()
    finally:
        observability.CHILD_SAMPLES.clear()
    assert f'mailbridge_inbound_total{{reason="posted",state="posted"}} {mine[key] + 12.0}' in exposed
    assert 'mailbridge_inbound_total{reason="spf_fail",state="rejected"} 2.0' in exposed
    assert exposed.count("# TYPE mailbridge_inbound_total counter") == 1


def test_one_process_is_the_default() -> None:
    from mailbridge.settings import load_settings

    assert load_settings().effective_smtp_processes == 1
    assert load_settings(smtp_processes=0).effective_smtp_processes == (os.cpu_count() or 1)


def test_a_dead_childs_counts_stay_in_the_totals() -> None:
    key = ("mailbridge_inbound_total", (("reason", "posted"), ("state", "posted")))
    observability.CHILD_SAMPLES[1] = [("mailbridge_inbound", *key, 5.0)]
    try:
        observability.retire_child(1)  # died after posting 5; its replacement starts at 0
        observability.CHILD_SAMPLES[1] = [("mailbridge_inbound", *key, 2.0)]
        node = CollectorRegistry()
        node.register(observability._NodeTotals())
        exposed = generate_latest(node).decode()
        mine = next(
            s.value
            for family in observability.REGISTRY.collect()
            for s in family.samples
            if (s.name, tuple(sorted(s.labels.items()))) == key
        )
    finally:
        observability.CHILD_SAMPLES.clear()
    assert f'mailbridge_inbound_total{{reason="posted",state="posted"}} {mine + 7.0}' in exposed


def test_shutdown_lets_a_message_in_the_pipeline_get_its_answer(seeded: Any, monkeypatch: Any) -> None:
    from mailbridge.inbound import pipeline
    from mailbridge.runtime import drain_ingress
    from tests.mailhelpers import live_server, reply_message, send

    conversation = open_conversation(seeded)
    address = reply_address(seeded, conversation, "alice")
    original = pipeline.Run.advance
    entered = threading.Event()

    def slow_advance(self: Any) -> Any:
        if not entered.is_set():
            entered.set()
            time.sleep(0.8)
        return original(self)

    monkeypatch.setattr(pipeline.Run, "advance", slow_advance)
    answers: list[int] = []
    with live_server(seeded) as server:
        msg = reply_message("alice@client.test", address, "Tuesday at 10 works for me.")
        client = threading.Thread(
            target=lambda: answers.append(send(server, msg, "alice@client.test", address)[0])
        )
        client.start()
        assert entered.wait(10)

        async def shut() -> None:
            """What `serve` does on SIGTERM: stop listening, drain, then (as asyncio.run does on
            the way out) cancel every task still running, SMTP sessions included."""
            server.server.close()
            await drain_ingress(seeded, timeout=10)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shut(), server.loop).result(15)
        client.join(10)
        assert answers == [250]
