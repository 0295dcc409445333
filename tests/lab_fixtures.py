"""Shared helpers for the lab tests: a small lab built through the storage API."""
from __future__ import annotations

from pathlib import Path

from runner.lab.binaries import make_exe, messenger51_msi
from runner.lab.store import Lab

ALICE = "S-1-5-21-1004336348-1177238915-682003330-1104"
CAROL = "S-1-5-21-1004336348-1177238915-682003330-1105"
CONTACTS = (r"Software\Microsoft\Exchange\Messenger\Profiles"
            r"\http://im.contoso.com/instmsg/aliases/alice\Contacts")


def make_lab(tmp_path: Path, faults: dict | None = None, **host_extra) -> Lab:
    lab = Lab.create(tmp_path / "lab", {
        "seed": 1,
        "hosts": {"pc0001": {"role": "client", "address": "127.0.1.1", **host_extra},
                  "exim01": {"role": "exchange_im", "address": "127.0.2.1"}},
        "faults": faults or {"seed": 7, "global": {}, "hosts": {}}})
    h = lab.host("pc0001")
    with h.bulk():
        h.fs.mkdir(r"C:\Temp")
        h.fs.write(r"C:\Program Files\Messenger\msmsgs.exe", make_exe("4.7.3001"))
        h.add_user_profile(ALICE, r"C:\Documents and Settings\alice", logged_on=True,
                           items=[(CONTACTS, [("bob@im.contoso.com", "REG_SZ", 'Bob "B" & Co 100%')])])
        h.add_user_profile(CAROL, r"C:\Documents and Settings\carol",
                           items=[(CONTACTS, [("dave@im.contoso.com", "REG_SZ", "")])])
        h.services.add("Messenger", "Messenger", state="STOPPED", start_type="DISABLED")
    lab.host("exim01").services.add("RTCSrv", "Exchange Instant Messaging", binary_path=r"C:\x\rtc.exe")
    lab.host("pc0001").fs.write(r"\\deploy\packages\WindowsMessenger51.msi", messenger51_msi())
    return lab


def set_put_truncated(lab_dir: Path, host: str, rate: float) -> None:
    """Set the lab fault ``put_truncated`` of ``host`` (a put or a line's input cut to half)
    in ``lab_dir/lab.json``, and drop the cached labs so new connections see it."""
    import json
    from runner.connections import lab as labconn
    path = Path(lab_dir) / "lab.json"
    cfg = json.loads(path.read_text())
    cfg.setdefault("faults", {}).setdefault("hosts", {})[host] = {"put_truncated": rate}
    path.write_text(json.dumps(cfg))
    labconn._labs.clear()


def im_clear_changes(directory, users) -> list:
    """The LDIF changes clearing each user's Exchange IM attributes, read through ``directory``."""
    from runner.lcs.exchange import IM_ATTRIBUTES, im_user_query
    from runner.windows import ldif
    changes = []
    for u in users:
        entry = directory.search(im_user_query(u.im_address).ldap_filter, list(IM_ATTRIBUTES))[0]
        changes.append(ldif.Change(entry.dn, "modify", [("delete", a, []) for a in IM_ATTRIBUTES if entry.get(a)]))
    return changes


def script_lines(data: bytes) -> list[str]:
    """The lines a batch file fed with its line runs (runner.windows.scripts.batch_file), without
    its ``@echo off`` and end mark: what would have gone one by one, for tests that look at lines."""
    from runner.windows.scripts import SCRIPT_END_MARK
    return [ln for ln in data.decode("utf-8").split("\r\n")
            if ln and ln != "@echo off" and not ln.startswith("rem " + SCRIPT_END_MARK)]
