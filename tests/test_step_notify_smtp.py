"""notify_users mails each notice through a real SMTP server on 127.0.0.1.

The server here is a minimal threaded SMTP responder (socketserver) that
records every message it accepts and can refuse chosen recipients with a
given reply code, so the step's mail path is exercised over a socket.
"""
from __future__ import annotations

import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Iterator

import pytest

from runner.errors import PermanentFault, TransientFault
from runner.model import Inventory, User
from runner.state import TaskRecord
from runner.steps.notify_users import NotifyUsers
from tests.scenario_support import expected_uri, make_scenario
from tests.stepctx import StepCtx

# -- a tiny SMTP server -------------------------------------------------------------


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: bytes

    @property
    def message(self) -> Any:
        return message_from_bytes(self.data, policy=policy.default)


@dataclass
class SmtpServer:
    """Accepts mail on 127.0.0.1:``port``; ``refuse`` maps a recipient to a reply like '550 no such user'."""

    port: int = 0
    mails: list[Mail] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(server: SmtpServer) -> type[socketserver.StreamRequestHandler]:
    class Handler(socketserver.StreamRequestHandler):
        def say(self, line: str) -> None:
            self.wfile.write(line.encode("ascii") + b"\r\n")

        def handle(self) -> None:
            self.say("220 test ESMTP")
            sender, rcpts = "", []
            while True:
                raw = self.rfile.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb = line[:4].upper()
                arg = line[line.find(":") + 1:].strip().strip("<>") if ":" in line else ""
                if verb in ("EHLO", "HELO"):
                    self.say("250 test")
                elif verb == "MAIL":
                    sender, rcpts = arg.split(">")[0], []
                    self.say("250 ok")
                elif verb == "RCPT":
                    addr = arg.split(">")[0]
                    if addr in server.refuse:
                        self.say(server.refuse[addr])
                    else:
                        rcpts.append(addr)
                        self.say("250 ok")
                elif verb == "DATA":
                    if not rcpts:
                        self.say("503 no recipients")
                        continue
                    self.say("354 go ahead")
                    body = bytearray()
                    while True:
                        chunk = self.rfile.readline()
                        if not chunk or chunk == b".\r\n":
                            break
                        body += chunk[1:] if chunk.startswith(b"..") else chunk
                    with server.lock:
                        server.mails.append(Mail(sender, list(rcpts), bytes(body)))
                    self.say("250 queued")
                elif verb == "RSET":
                    sender, rcpts = "", []
                    self.say("250 ok")
                elif verb == "NOOP":
                    self.say("250 ok")
                elif verb == "QUIT":
                    self.say("221 bye")
                    return
                else:
                    self.say("502 not implemented")
    return Handler


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    state = SmtpServer()
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _handler(state))
    srv.daemon_threads = True
    state.port = srv.server_address[1]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield state
    srv.shutdown()
    srv.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- step-level helpers ---------------------------------------------------------------

MAPPING = {"domains": {"im.contoso.com": "contoso.com"}, "template": "sip:{local}@{domain}"}


class ExportedCtx(StepCtx):
    """A StepCtx whose users were exported: ``previous`` names their merged artifact."""

    def previous(self, module: str, target: str) -> list:
        name = f"contacts/{target}/merged.json"
        if module == "export_contacts" and self.artifacts.read(name) is not None:
            return [TaskRecord(step="export", module=module, target=target, status="changed",
                               data={"merged_artifact": name}, run_id="r0", key="k", ended=1.0)]
        return []


def _ctx(tmp_path: Path, users: list[User], port: int, **vars: Any) -> ExportedCtx:
    inv = Inventory(path="inv.yml", hosts={}, groups={}, users={u.alias: u for u in users},
                    vars={"sip_mapping": MAPPING})
    return ExportedCtx(inv, {}, tmp_path, vars={
        "sip_mapping": MAPPING, "notify_outbox": str(tmp_path / "outbox"), "notify_smtp_host": "127.0.0.1",
        "notify_smtp_port": port, "notify_from": "helpdesk@contoso.com",
        "notify_smtp_to": "{{ user.alias }}@contoso.com", **vars})


def _run(ctx: StepCtx, user: User) -> Any:
    step = NotifyUsers()
    diff = step.probe(ctx, user)
    return None if diff is None else step.apply(ctx, user, diff)


# -- tests ---------------------------------------------------------------------------------

def test_hostile_display_name_cannot_add_headers(tmp_path: Path, smtp: SmtpServer) -> None:
    eve = User("eve", "eve@im.contoso.com", display_name='Eve "X", <a@b>\r\nBcc: victim@evil.example\r\n')
    ctx = _ctx(tmp_path, [eve], smtp.port)
    ctx.artifacts.write("contacts/eve/merged.json", json.dumps({"contacts": [
        {"address": "bob@im.contoso.com", "name": "Bob\r\nBcc: x@evil.example"}]}).encode())
    result = _run(ctx, eve)
    assert result.status == "changed" and result.data["mailed"] == "eve@contoso.com"
    [mail] = smtp.mails
    assert mail.recipients == ["eve@contoso.com"]
    msg = mail.message
    assert msg["Bcc"] is None and b"\nBcc:" not in mail.data.split(b"\r\n\r\n", 1)[0]
    assert msg["To"].addresses[0].addr_spec == "eve@contoso.com"
    assert "Eve" in msg["To"].addresses[0].display_name
    assert "sip:bob@contoso.com" in msg.get_content()


def test_address_with_crlf_is_refused_for_that_user_but_notice_is_written(tmp_path: Path,
                                                                         smtp: SmtpServer) -> None:
    mallory = User("mallory", "mallory@im.contoso.com", vars={"email": "m@contoso.com\r\nBcc: v@evil.example"})
    ctx = _ctx(tmp_path, [mallory], smtp.port)
    with pytest.raises(PermanentFault, match="control characters"):
        _run(ctx, mallory)
    assert smtp.mails == []
    assert (tmp_path / "outbox" / "mallory.txt").is_file()


def test_recipient_refused_with_5xx_is_permanent_then_mailed_once_accepted(tmp_path: Path,
                                                                           smtp: SmtpServer) -> None:
    bob = User("bob", "bob@im.contoso.com", display_name="Bob")
    ctx = _ctx(tmp_path, [bob], smtp.port)
    smtp.refuse["bob@contoso.com"] = "550 5.1.1 no such user"
    with pytest.raises(PermanentFault, match="550"):
        _run(ctx, bob)
    notice = tmp_path / "outbox" / "bob.txt"
    assert notice.is_file() and not (tmp_path / "outbox" / "bob.sent.json").exists()
    smtp.refuse.clear()
    result = _run(ctx, bob)
    assert result.data["mailed"] == "bob@contoso.com" and "notice written" not in result.message
    assert len(smtp.mails) == 1
    assert _run(ctx, bob) is None and len(smtp.mails) == 1


def test_recipient_refused_with_4xx_is_transient(tmp_path: Path, smtp: SmtpServer) -> None:
    bob = User("bob", "bob@im.contoso.com")
    smtp.refuse["bob@contoso.com"] = "451 4.3.0 try later"
    with pytest.raises(TransientFault, match="451"):
        _run(_ctx(tmp_path, [bob], smtp.port), bob)
    assert (tmp_path / "outbox" / "bob.txt").is_file()


def test_nothing_listening_is_transient_and_keeps_the_notice(tmp_path: Path) -> None:
    bob = User("bob", "bob@im.contoso.com")
    with pytest.raises(TransientFault, match="SMTP 127.0.0.1"):
        _run(_ctx(tmp_path, [bob], _free_port()), bob)
    assert (tmp_path / "outbox" / "bob.txt").read_text(encoding="utf-8").startswith("Hello bob")
    assert not (tmp_path / "outbox" / "bob.sent.json").exists()


def test_changed_notice_is_mailed_again(tmp_path: Path, smtp: SmtpServer) -> None:
    bob = User("bob", "bob@im.contoso.com")
    ctx = _ctx(tmp_path, [bob], smtp.port)
    _run(ctx, bob)
    ctx.artifacts.write("contacts/bob/merged.json", json.dumps({"contacts": [
        {"address": "carol@im.contoso.com", "name": "Carol"}]}).encode())
    _run(ctx, bob)
    assert len(smtp.mails) == 2 and "sip:carol@contoso.com" in smtp.mails[1].message.get_content()


def test_without_smtp_host_nothing_is_mailed(tmp_path: Path, smtp: SmtpServer) -> None:
    bob = User("bob", "bob@im.contoso.com")
    ctx = _ctx(tmp_path, [bob], smtp.port, notify_smtp_host="")
    assert _run(ctx, bob).data == {"notice": str(tmp_path / "outbox" / "bob.txt")}
    assert smtp.mails == []


def test_immediate_recreate_mails_each_user_once_with_new_addresses(tmp_path: Path, smtp: SmtpServer) -> None:
    sc = make_scenario(tmp_path, "immediate-recreate.yml", seed=5, clients=3, users_per_client=2, contacts=6)
    inv = sc.inventory.read_text(encoding="utf-8").replace(
        "  vars:\n", "  vars:\n    notify_smtp_host: \"127.0.0.1\"\n"
        f"    notify_smtp_port: {smtp.port}\n    notify_from: \"helpdesk@contoso.com\"\n"
        "    notify_smtp_to: \"{{ user.alias }}@contoso.com\"\n", 1)
    sc.inventory.write_text(inv, encoding="utf-8")
    first = sc.apply("--tags", "export,notify")
    assert first.code == 0, first.out[-3000:]
    manifest = sc.manifest
    by_rcpt = {m.recipients[0]: m for m in smtp.mails}
    assert sorted(by_rcpt) == sorted(f"{a}@contoso.com" for a in manifest["users"])
    assert len(smtp.mails) == len(manifest["users"])
    for alias, u in manifest["users"].items():
        body = by_rcpt[f"{alias}@contoso.com"].message.get_content().replace("\r\n", "\n")
        for machine in u["machines"].values():
            for c in machine["contacts"]:
                uri = expected_uri(c["address"], manifest)
                if uri is not None:
                    assert uri.lower() in body.lower(), (alias, uri)
        assert (sc.state / "outbox" / f"{alias}.txt").read_text(encoding="utf-8") == body
    second = sc.apply("--tags", "export,notify")
    assert second.code == 0 and second.totals.get("changed", 0) == 0, second.out[-2000:]
    assert len(smtp.mails) == len(manifest["users"])


def test_a_notice_write_killed_midway_leaves_no_temporary_file_after_the_rerun(tmp_path: Path) -> None:
    """A SIGKILL between the temporary file and its rename leaves `.bob.txt.*.tmp`; the
    rerun that writes the notice clears it (the stress-kill test compares the outbox)."""
    import os
    import time
    bob = User("bob", "bob@im.contoso.com", display_name="Bob")
    ctx = _ctx(tmp_path, [bob], 0, notify_smtp_host="")
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    stale = outbox / ".bob.txt.gxkk0x97.tmp"
    stale.write_bytes(b"half a notice")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    result = _run(ctx, bob)
    assert result.status == "changed" and (outbox / "bob.txt").is_file()
    assert sorted(p.name for p in outbox.iterdir()) == ["bob.txt"]
