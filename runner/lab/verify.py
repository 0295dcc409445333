"""Check a rehearsal: compare the LCS store and the Exchange side with the manifest.

For each user of ``manifest.json`` (optionally only some waves):

- ``enabled``: an ``MSFT_SIPESUserSetting`` row exists for the user's AD
  GUID, enabled, with the expected PrimaryURI;
- ``missing`` / ``extra`` / ``duplicated``: the mappable contacts of all the
  user's machines (union, case-insensitive) against the user's contacts on
  LCS; a list longer than the pool's MaxContactsPerUser is complete when the
  contacts on LCS are ``limit`` of the expected ones (``over_limit`` counts
  the rest, which the run must have reported);
- ``groups_missing``: group names (at most 128 characters) not on LCS;
- ``names_wrong``: contacts on LCS whose name is not their display name in one of the
  user's registries (its first 256 characters), character for character;
- ``ad_missing`` (with the Exchange side): for an enabled user, what AD lacks of the enable
  (``msRTCSIP-PrimaryUserAddress``, ``msRTCSIP-UserEnabled``,
  ``msRTCSIP-PrimaryHomeServer`` saying what LCS says, the ``sip:``
  proxyAddresses value): a partly done enable;
- ``permissions_missing`` / ``permissions_wrong`` (with ``permissions``): the
  manifest's allow and block list entries that map (a person's RVP URL through
  the same rule as contacts, a domain through its ``domains`` map; the others
  must have been reported) against the user's ``MSFT_SIPESUserACEData`` on LCS:
  an entry absent, or present with other Presence/Communication values;
  ``permissions_extra`` lists entries LCS has beyond them (a user's own, not a problem);
- ``exchange_im_disabled``: the AD user carries no msExchIM* attribute;
with ``signin`` (``runner lab verify --signin``), the Messenger sign-in policy of every
client, or with ``waves`` of the clients of those waves' users (a SIP server, TCP or TLS,
and, for the whole lab, Exchange IM switched off);
with ``rolled_back`` (``--rolled-back``, after playbooks/rollback.yml) the users are
expected back on Exchange IM instead: ``msExchIMAddress`` as the manifest has it, not
enabled on LCS (their contacts may stay there: not checked), the server not
decommissioned, and with ``signin`` their clients' Exchange IM account not switched off
(no ``Disabled`` 1, no ``ExchangeConn`` 2);
for every client, whatever the waves: a msmsgs.exe of Messenger 5.1 or later
comes with a registered product of that version (product record and
Uninstall key), and a registered 5.1 product with its file (else a partial
install, in ``problems``);
and for the whole lab (not with ``waves``, since the server stays in service
until the last wave): ``decommissioned`` (IM service stopped and disabled,
IM virtual server object gone).

The mapping of addresses to SIP URIs is implemented here independently of
runner.lcs (same documented rule: exact table, then the user's own
sip_uri, then the domain map with the template) so a bug there cannot hide
itself. Before reading, changes that killed processes left committed but
not finished are completed (runner.lab.store.Lab.recover), as the real
servers would have. ``report.ok`` is True when everything checked is as expected; the
CLI exits 0 then, 1 otherwise.
"""
from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from runner.errors import InputError
from runner.lab import exchange

_ADDR = re.compile(r"^([^@\s]+)@([^@\s]+)\Z")
_USER_PART = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
MAX_GROUP_NAME = 128
MAX_CONTACT_NAME = 256  # LCS keeps the first 256 characters of a contact's Name


def map_address(address: str, rule: dict[str, Any], users: dict[str, str]) -> str | None:
    """The SIP URI an Exchange IM address should become, or None when unmappable."""
    a = address.strip()
    m = _ADDR.match(a)
    if not m:
        return None
    table = {k.lower(): v for k, v in (rule.get("table") or {}).items()}
    uri = table.get(a.lower()) or users.get(a.lower())
    if uri is None:
        domains = {k.lower(): v for k, v in (rule.get("domains") or {}).items()}
        dom = m.group(2).lower()
        if dom not in domains:
            return None
        uri = str(rule.get("template") or "sip:{local}@{domain}").format(
            local=m.group(1), domain=domains[dom], im_domain=dom, address=a)
    if not uri.lower().startswith("sip:") or len(uri) > 454:
        return None
    um = _ADDR.match(uri[4:])
    if not um or not _USER_PART.match(um.group(1)):
        return None
    if not all(_LABEL.match(lbl) for lbl in um.group(2).split(".")):
        return None
    return uri


def _norm(uri: str) -> str:
    return uri.strip().casefold()


@dataclass
class UserReport:
    """What verify found for one user."""

    alias: str
    wave: str | None
    enabled: bool = False
    primary_uri: str | None = None
    expected: int = 0
    on_lcs: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    over_limit: int = 0
    groups_missing: list[str] = field(default_factory=list)
    names_wrong: list[str] = field(default_factory=list)
    ad_missing: list[str] = field(default_factory=list)
    permissions_expected: int = 0
    permissions_unmappable: int = 0
    permissions_missing: list[str] = field(default_factory=list)
    permissions_wrong: list[str] = field(default_factory=list)
    permissions_extra: list[str] = field(default_factory=list)
    exchange_im_disabled: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Report:
    """The whole verification: per-user reports and the server's state."""

    users: list[UserReport]
    decommissioned: bool | None
    limit: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(u.ok for u in self.users)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "limit": self.limit, "decommissioned": self.decommissioned,
                "problems": self.problems,
                "users": [dict(asdict(u), ok=u.ok) for u in self.users]}


def load_manifest(lab_dir: Path) -> dict[str, Any]:
    """The lab's manifest.json (InputError when the directory holds no lab)."""
    p = Path(lab_dir) / "manifest.json"
    if not p.is_file():
        raise InputError(f"not found: {p.parent} holds no lab (create one with `runner lab init --dir {p.parent}`)",
                         str(p))
    return json.loads(p.read_text(encoding="utf-8"))


def verify(lab_dir: Path, *, waves: Iterable[str] = (), contacts: bool = True,
           exchange_side: bool = True, signin: bool = False, permissions: bool | None = None,
           rolled_back: bool = False) -> Report:
    """Compare the lab's LCS store and AD with its manifest (see the module docstring).
    ``permissions`` (default: as ``contacts``; scenario 1's users recreate both) checks the
    allow and block lists; ``rolled_back`` expects the users back on Exchange IM instead."""
    if permissions is None:
        permissions = contacts
    lab_dir = Path(lab_dir)
    man = load_manifest(lab_dir)
    if (lab_dir / "lab.json").is_file():
        from runner.lab.store import Lab
        Lab(lab_dir).recover()
    waves = set(waves)
    rule = man.get("sip_mapping") or {}
    user_uris = {u["im_address"].lower(): u["sip_uri"] for u in man["users"].values()}
    lcs_db = lab_dir / "hosts" / man["lcs_server"] / "lcs.db"
    db = sqlite3.connect(f"file:{lcs_db}?mode=ro", uri=True)
    limit_row = db.execute("SELECT value FROM pool_settings WHERE name='MaxContactsPerUser'").fetchone()
    limit = int(limit_row[0]) if limit_row else 150
    ad = exchange.Directory(exchange.ad_path(lab_dir)) if exchange_side else None
    reports: list[UserReport] = []
    try:
        for alias, u in man["users"].items():
            if waves and u.get("wave") not in waves:
                continue
            r = UserReport(alias, u.get("wave"))
            guid = u["ad_guid"].upper()
            row = db.execute("SELECT primary_uri, enabled, home_server_dn FROM users WHERE instance_id=?",
                             (guid,)).fetchone()
            if row:
                r.primary_uri, r.enabled = row[0], bool(row[1])
            if rolled_back:
                _check_rolled_back(ad, r, u)
                reports.append(r)
                continue
            if not r.enabled:
                r.problems.append("not enabled on LCS")
            elif (r.primary_uri or "").lower() != u["sip_uri"].lower():
                r.problems.append(f"PrimaryURI is {r.primary_uri}, expected {u['sip_uri']}")
            if r.enabled and ad is not None:
                dn = exchange.guid_dn(ad, u["ad_guid"])
                r.ad_missing = (exchange.rtc_problems(ad.attributes(dn), row[0], row[2]) if dn
                                else ["the AD user object"])
                if r.ad_missing:
                    r.problems.append("enabled on LCS but AD lacks " + ", ".join(r.ad_missing))
            if contacts:
                _check_contacts(db, r, guid, u, rule, user_uris, limit)
            if permissions and u.get("permissions") is not None:
                _check_permissions(db, r, guid, u["permissions"], rule, user_uris)
            if ad is not None:
                dn = exchange.guid_dn(ad, u["ad_guid"])
                attrs = ad.attributes(dn) if dn else {}
                left = [a for a in exchange.IM_ATTRIBUTES if any(k.lower() == a.lower() for k in attrs)]
                r.exchange_im_disabled = not left
                if left:
                    r.problems.append("Exchange IM still enabled (" + ", ".join(left) + ")")
            reports.append(r)
        # A wave's night leaves the server in service for the other waves: only a whole-lab check
        # asks; a rollback, of a wave or of all, needs it in service.
        decommissioned = _decommissioned(lab_dir, man, ad) if ad is not None and (rolled_back or not waves) \
            else None
    finally:
        db.close()
        if ad is not None:
            ad.close()
    rep = Report(reports, decommissioned, limit)
    rep.problems.extend(client_problems(lab_dir))
    clients = {c for u in man["users"].values() if u.get("wave") in waves for c in u.get("clients") or []} \
        if waves else None
    if signin and rolled_back:
        rep.problems.extend(exchange_back_problems(lab_dir, clients))
    elif signin:
        rep.problems.extend(signin_problems(lab_dir, pool=man.get("lcs_pool_fqdn"),
                                            exchange_off=decommissioned is not None, clients=clients))
    if rolled_back:
        if decommissioned:
            rep.problems.append(f"Exchange IM server {man['exchange_server']} decommissioned: "
                                "rolled-back users cannot sign in to it")
    elif decommissioned is False:
        rep.problems.append(f"Exchange IM server {man['exchange_server']} not decommissioned")
    return rep


MESSENGER_EXE = ("C", "Program Files", "Messenger", "msmsgs.exe")
UNINSTALL_KEY_LC = r"software\microsoft\windows\currentversion\uninstall"


def _version(v: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v or "")[:4])


MESSENGER_POLICY_LC = r"software\policies\microsoft\messenger\client"
EXCHANGE_POLICY_LC = r"software\microsoft\messengerservice\policies"
EXCHANGE_SERVICE_LC = MESSENGER_POLICY_LC + r"\{83d4679e-b6d7-11d2-bf36-00c04fb90a03}"


def _policy_values(hdir: Path) -> dict[tuple[str, str], tuple[str, Any]]:
    """The Messenger policy values of a lab client, read from its host.db."""
    h = sqlite3.connect(f"file:{hdir / 'host.db'}?mode=ro", uri=True)
    try:
        return {(k, n): (t, d) for k, n, t, d in h.execute(
            "SELECT key_lc, name_lc, type, data FROM reg_value WHERE key_lc IN (?, ?, ?)",
            (MESSENGER_POLICY_LC, EXCHANGE_POLICY_LC, EXCHANGE_SERVICE_LC))}
    finally:
        h.close()


def exchange_back_problems(lab_dir: Path, clients: set[str] | None) -> list[str]:
    """Clients (of ``clients``; None: all) on which Windows Messenger cannot sign in to
    Exchange IM: its account switched off by policy (``Disabled`` 1 under the Exchange IM
    service's key). The SIP server a migration set may stay (docs/rollback.md)."""
    out = []
    for name, hdir in _client_dirs(lab_dir):
        if clients is not None and name not in clients:
            continue
        values = _policy_values(hdir)
        if values.get((EXCHANGE_SERVICE_LC, "disabled")) == ("REG_DWORD", 1):
            out.append(f"{name}: Messenger sign-in policy: Exchange IM still switched off")
    return out


def _check_rolled_back(ad: exchange.Directory | None, r: UserReport, u: dict[str, Any]) -> None:
    """A rolled-back user: not enabled on LCS, and (with the Exchange side) their
    msExchIMAddress back as the manifest has it and AD's msRTCSIP-UserEnabled not TRUE."""
    if r.enabled:
        r.problems.append("still enabled on LCS (a rolled-back user is disabled there)")
    if ad is None:
        return
    dn = exchange.guid_dn(ad, u["ad_guid"])
    attrs = {k.lower(): v for k, v in (ad.attributes(dn) if dn else {}).items()}
    address = [str(v).lower() for v in attrs.get("msexchimaddress") or []]
    r.exchange_im_disabled = not address
    if address != [u["im_address"].lower()]:
        r.problems.append("Exchange IM not back: msExchIMAddress is "
                          + (", ".join(address) if address else "missing") + f", expected {u['im_address']}")
    if [str(v).upper() for v in attrs.get("msrtcsip-userenabled") or []] == ["TRUE"]:
        r.problems.append("AD still has msRTCSIP-UserEnabled TRUE")


def signin_problems(lab_dir: Path, *, pool: str | None, exchange_off: bool,
                    clients: set[str] | None = None) -> list[str]:
    """Clients (of ``clients``, the machines of the waves checked; None: all) whose Windows
    Messenger policy does not name the SIP server ``pool`` (any server when None) with a
    TCP (2) or TLS (4) transport in manual mode (docs/messenger-signin.md); with
    ``exchange_off`` (the whole lab, after decommissioning), also those where ExchangeConn
    is left or the Exchange IM service is not disabled. Read from each client's host.db,
    not through the runner."""
    out: list[str] = []
    for name, hdir in _client_dirs(lab_dir):
        if clients is not None and name not in clients:
            continue
        values = _policy_values(hdir)
        server = values.get((MESSENGER_POLICY_LC, "serveraddress"))
        wrong: list[str] = []
        if server is None or server[0] != "REG_SZ" or not server[1]:
            wrong.append("no SIP server")
        elif pool and str(server[1]).lower() != pool.lower():
            wrong.append(f"SIP server {server[1]!r}, not {pool!r}")
        if values.get((MESSENGER_POLICY_LC, "transport")) not in (("REG_DWORD", 2), ("REG_DWORD", 4)):
            wrong.append("no TCP/TLS transport")
        if values.get((MESSENGER_POLICY_LC, "configurationmode")) != ("REG_DWORD", 1):
            wrong.append("not in manual configuration mode")
        if exchange_off and (EXCHANGE_POLICY_LC, "exchangeconn") in values:
            wrong.append("ExchangeConn still set")
        if exchange_off and values.get((EXCHANGE_SERVICE_LC, "disabled")) != ("REG_DWORD", 1):
            wrong.append("Exchange IM not switched off")
        if wrong:
            out.append(f"{name}: Messenger sign-in policy: " + ", ".join(wrong))
    return out


def _client_dirs(lab_dir: Path) -> list[tuple[str, Path]]:
    """(name, host folder) of the lab's clients that exist."""
    try:
        hosts = json.loads((Path(lab_dir) / "lab.json").read_text(encoding="utf-8")).get("hosts") or {}
    except (OSError, ValueError):
        return []
    return [(name, Path(lab_dir) / "hosts" / name) for name, cfg in (hosts.items() if isinstance(hosts, dict) else [])
            if isinstance(cfg, dict) and cfg.get("role", "client") == "client"
            and (Path(lab_dir) / "hosts" / name / "host.db").exists()]


def client_problems(lab_dir: Path, minimum: str = "5.1") -> list[str]:
    """Partial installs on the lab's clients: a msmsgs.exe of Messenger ``minimum`` or later
    without a registered product of that version (product record and Uninstall key
    DisplayVersion), or such a product without its file."""
    from runner.lab.binaries import read_version_info
    try:
        hosts = json.loads((Path(lab_dir) / "lab.json").read_text(encoding="utf-8")).get("hosts") or {}
    except (OSError, ValueError):
        return []
    want, out = _version(minimum), []
    for name, cfg in (hosts.items() if isinstance(hosts, dict) else []):
        if not isinstance(cfg, dict) or cfg.get("role", "client") != "client":
            continue
        hdir = Path(lab_dir) / "hosts" / name
        if not (hdir / "host.db").exists():
            continue
        exe = hdir.joinpath("fs", *MESSENGER_EXE)
        info = read_version_info(exe.read_bytes()) if exe.is_file() else None
        file_v = (info or {}).get("FileVersion")
        h = sqlite3.connect(f"file:{hdir / 'host.db'}?mode=ro", uri=True)
        try:
            products = [(c, v) for c, v in h.execute("SELECT code, version FROM product")]
            keys = {r[0].rsplit("\\", 1)[-1].lower(): r[1] for r in h.execute(
                "SELECT key_lc, data FROM reg_value WHERE name_lc='displayversion' AND key_lc LIKE ?",
                (UNINSTALL_KEY_LC + "\\%",))}
        finally:
            h.close()
        registered = [v for c, v in products if _version(v) >= want and _version(keys.get(c.lower())) >= want]
        if file_v and _version(file_v) >= want and not registered:
            out.append(f"{name}: msmsgs.exe is {file_v} but no Messenger {minimum} product is registered "
                       "(product and Uninstall key): a partial install")
        elif registered and not (file_v and _version(file_v) >= want):
            out.append(f"{name}: Messenger {registered[0]} is registered but msmsgs.exe is "
                       f"{file_v or 'missing'}: a partial install")
    return out


def _check_contacts(db: sqlite3.Connection, r: UserReport, guid: str, u: dict[str, Any], rule: dict[str, Any],
                    user_uris: dict[str, str], limit: int) -> None:
    expected: dict[str, str] = {}
    names: dict[str, set[str]] = {}  # the display names a contact has in the user's registries
    groups: set[str] = set()
    for machine in u["machines"].values():
        for c in machine["contacts"]:
            uri = map_address(c["address"], rule, user_uris)
            if uri is not None:
                expected.setdefault(_norm(uri), uri)
                names.setdefault(_norm(uri), set()).add((c.get("display_name") or "")[:MAX_CONTACT_NAME])
        groups.update(g for g in machine.get("groups", {}) if len(g) <= MAX_GROUP_NAME)
    stored = db.execute("SELECT sip_uri, name FROM contacts WHERE user_instance_id=?", (guid,)).fetchall()
    rows = [x[0] for x in stored]
    # a contact's name on LCS is its display name in the registry, character for character
    # (a script read in another code page than it was written in changes it)
    r.names_wrong = sorted(f"{uri}: {name!r}" for uri, name in stored
                           if _norm(uri) in names and (name or "") not in names[_norm(uri)])
    if r.names_wrong:
        r.problems.append(f"{len(r.names_wrong)} contact name(s) not as in the registry")
    seen: dict[str, int] = {}
    for uri in rows:
        seen[_norm(uri)] = seen.get(_norm(uri), 0) + 1
    r.expected, r.on_lcs = len(expected), len(rows)
    r.duplicated = sorted(expected.get(k, k) for k, n in seen.items() if n > 1)
    r.extra = sorted(k for k in seen if k not in expected)
    missing = sorted(v for k, v in expected.items() if k not in seen)
    if len(expected) > limit:
        present = len(expected) - len(missing)
        r.over_limit = len(expected) - limit
        if present >= limit:
            missing = []
        else:
            missing = missing[: limit - present]
    r.missing = missing
    for what, lst in (("missing", r.missing), ("extra", r.extra), ("duplicated", r.duplicated)):
        if lst:
            r.problems.append(f"{len(lst)} contact(s) {what}")
    have_groups = {x[0] for x in db.execute("SELECT name FROM contact_groups WHERE user_instance_id=?", (guid,))}
    r.groups_missing = sorted(groups - have_groups) if r.expected else []
    if r.groups_missing:
        r.problems.append(f"{len(r.groups_missing)} group(s) missing")


def expected_permissions(perms: dict[str, Any], rule: dict[str, Any],
                         users: dict[str, str]) -> tuple[dict[tuple[str, str], tuple[str, str]], int]:
    """The manifest's allow and block list of one user as LCS should hold it:
    {(type, mask lower case): (Presence, Communication)} and how many entries map to nothing."""
    from urllib.parse import unquote
    domains = {k.lower(): v.lower() for k, v in (rule.get("domains") or {}).items()}
    out: dict[tuple[str, str], tuple[str, str]] = {}
    unmappable = 0
    for e in perms.get("entries") or []:
        if e["type"] == "All":
            key: tuple[str, str] | None = ("all", "")
        elif e["type"] == "Domain":
            key = ("domain", domains[e["domain"].lower()]) if e["domain"].lower() in domains else None
        else:
            _, _, host, _, _, alias = e["url"].split("/", 5)
            uri = map_address(f"{unquote(alias)}@{host}", rule, users)
            key = ("user", uri.lower()) if uri else None
        if key is None:
            unmappable += 1
        else:
            out[key] = (e["presence"], e["communication"])
    return out, unmappable


def _check_permissions(db: sqlite3.Connection, r: UserReport, guid: str, perms: dict[str, Any],
                       rule: dict[str, Any], users: dict[str, str]) -> None:
    expected, r.permissions_unmappable = expected_permissions(perms, rule, users)
    r.permissions_expected = len(expected)
    try:
        rows = db.execute("SELECT type, mask, presence, communication FROM user_aces WHERE user_instance_id=?",
                          (guid,)).fetchall()
    except sqlite3.OperationalError:  # a pool store without the table: no entry on LCS
        rows = []
    have = {(t.lower(), (m or "").lower()): (p, c) for t, m, p, c in rows}

    def show(k: tuple[str, str]) -> str:
        return k[0] if not k[1] else f"{k[0]} {k[1]}"
    r.permissions_missing = sorted(show(k) for k in expected if k not in have)
    r.permissions_wrong = sorted(f"{show(k)}: {have[k][0]}/{have[k][1]}, expected {v[0]}/{v[1]}"
                                 for k, v in expected.items()
                                 if k in have and (have[k][0].lower(), have[k][1].lower()) != (v[0].lower(), v[1].lower()))
    r.permissions_extra = sorted(show(k) for k in have if k not in expected)
    if r.permissions_missing:
        r.problems.append(f"{len(r.permissions_missing)} permission {'entry' if len(r.permissions_missing) == 1 else 'entries'} missing on LCS")
    if r.permissions_wrong:
        r.problems.append(f"{len(r.permissions_wrong)} permission {'entry' if len(r.permissions_wrong) == 1 else 'entries'} with other values on LCS")


def _decommissioned(lab_dir: Path, man: dict[str, Any], ad: exchange.Directory) -> bool:
    host_db = lab_dir / "hosts" / man["exchange_server"] / "host.db"
    state = start = None
    if host_db.exists():
        h = sqlite3.connect(f"file:{host_db}?mode=ro", uri=True)
        try:
            row = h.execute("SELECT state, start_type FROM service WHERE name_lc=?",
                            (exchange.IM_SERVICE.lower(),)).fetchone()
        finally:
            h.close()
        if row:
            state, start = row
    service_gone = state is None or (state == "STOPPED" and start == "DISABLED")
    vs = [dn for dn in ad.dns_under(man.get("ad_base", "DC=contoso,DC=com"))
          if any(str(v).lower() == "protocolcfgimvirtualserver" for v in ad.get(dn, "objectClass"))]
    return service_gone and not vs
