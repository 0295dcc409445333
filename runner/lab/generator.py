"""The lab generator: a seeded, realistic Exchange 2000 IM estate on disk.

``generate(directory, clients=..., users_per_client=..., contacts=..., seed=...)``
writes a complete lab (layout in runner.lab.store and docs/lab-storage.md):
Windows XP (SP2/SP3) and Windows 2000 (SP4) clients with user profiles and
Exchange IM contact lists in their hives, an Exchange 2000 IM server on
Windows 2000 Server with every user homed on it (AD in ``ad.db``), an empty
LCS 2005 pool on Windows Server 2003 (``hosts/lcs01/lcs.db``): each host's
folders and registry are those of its version (runner.lab.winver), the Windows
Messenger 5.1 package on ``\\\\deploy\\packages``, ``manifest.json`` (the
ground truth) and ``inventory.yml``. The same arguments always produce the
same manifest and inventory.

What the data holds, on purpose: shared machines (several profiles),
users with two or three machines (their lists overlap: duplicates across
machines, sometimes with different letter case), some users logged on
(hive mounted at ``HKU\\<SID>``, in use) and the others only as NTUSER.DAT,
empty lists, lists near and over the LCS limit (150), colleagues (other lab
users, written ``alias@im.contoso.com`` or ``alias@contoso.com``), partners
(``@im.fabrikam.com``: mappable by domain; one by the table), outsiders
(unmappable domains) and malformed addresses, display names with quotes,
``& | % ^ < >``, Unicode and more than 256 characters, groups (hostile names
too, one over 128 characters now and then).

``ensure_lab`` is what the ``plugin: lab`` inventory calls: it creates a lab
once (lock file, build in a temporary directory, atomic rename) and returns
the inventory path; an existing lab is kept as it is.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


from runner.errors import InputError
from runner.model import Inventory
from runner.lab import exchange
from runner.lab.binaries import make_exe, messenger51_msi, MESSENGER51_CODE
from runner.lab.lcs import LcsStore
from runner.lab.store import Lab, close_thread_connections, hive_image
from runner.lab.verify import map_address
from runner.lab.winver import ROLE_DEFAULT

IM_DOMAIN = "im.contoso.com"
SMTP_DOMAIN = "contoso.com"
SIP_DOMAIN = "contoso.com"
PARTNER_IM_DOMAIN = "im.fabrikam.com"
PARTNER_SIP_DOMAIN = "fabrikam.com"
AD_BASE = "DC=contoso,DC=com"
DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"
EXCHANGE_HOST = "exim01"
LCS_HOST = "lcs01"
LCS_SERVICE = "RTCSRV"
LCS_SERVER_DN = ("CN=LC Services,CN=Microsoft,CN=lcs01,CN=Pools,CN=RTC Service,CN=Microsoft,"
                 "CN=System," + AD_BASE)
PACKAGE_SHARE = ("deploy", "packages")
PACKAGE_NAME = "WindowsMessenger51.msi"
CONTACTS_KEY = r"Software\Microsoft\Exchange\Messenger\Profiles"
LCS_LIMIT = 150
WINDOWS_NT_KEY = r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion"
WAVES = (("wave1", 0.1), ("wave2", 0.3), ("wave3", 0.6))

# (label, file version, MSI product code or None when it ships with the OS)
MESSENGERS = {
    "msn46": ("MSN Messenger 4.6", "4.6.0082", "{0A2C3C6E-6D2A-4F41-8D7C-3F2D8C4C0460}"),
    "msn47": ("MSN Messenger 4.7", "4.7.0105", "{0A2C3C6E-6D2A-4F41-8D7C-3F2D8C4C0470}"),
    "wm47": ("Windows Messenger", "4.7.2009", None),
    "wm51": ("Windows Messenger 5.1", "5.1.0715", MESSENGER51_CODE),
}

FIRST = ["Alice", "Bob", "Carol", "David", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Karl", "Laura",
         "Mallory", "Niaj", "Olivia", "Peggy", "Quentin", "Rupert", "Sybil", "Trent", "Uma", "Victor",
         "Walter", "Xena", "Yusuf", "Zoë", "José", "Søren", "Agnès", "Łukasz", "Chloé", "Björn", "Anaïs",
         "Mei", "Hiro", "Priya", "Omar", "Fatima", "Ingrid", "Pablo"]
LAST = ["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Robinson", "Wright",
        "Thompson", "Evans", "Walker", "White", "Roberts", "Green", "Hall", "Wood", "Jackson", "Clarke",
        "Müller", "Ødegård", "Nuñez", "O'Brien", "Dubois", "Kowalski", "Nakamura", "Kumar", "Haddad", "Novák"]
OUTSIDER_DOMAINS = ["hotmail.com", "aol.com", "im.litware.com", "msn.com"]
MALFORMED = ["bob", "@contoso.com", "carol@@im.contoso.com", "dave smith@im.contoso.com", "erin@", "frank@im..contoso.com"]
HOSTILE_NAMES = ['Bob "The Builder" O\'Neil', "R&D | Ops", "100% ^caret^ guy", "<admin> & co", "Tom %USERNAME%",
                 "Quote\" ; & echo pwned", "Ünïcødé 李伟 😀", "", "a^&b|c<d>e", "semi;colon, comma"]
GROUP_NAMES = ["Colleagues", "Project X", "Friends & Family", "Ops | On call", "100% <Core> Team", "Partners",
               "Management", "Kollegen (München)"]


def _ascii(s: str) -> str:
    table = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "ß": "ss"})
    import unicodedata
    s = unicodedata.normalize("NFKD", s.translate(table))
    return "".join(c for c in s if c.isascii() and c.isalnum()).lower()


@dataclass
class _User:
    alias: str
    display_name: str
    sid: str
    guid: str
    clients: list[str] = field(default_factory=list)
    wave: str = "wave1"
    contacts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    groups: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    logged_on: dict[str, bool] = field(default_factory=dict)
    im: str | None = None     # the IM address when not alias@IM_DOMAIN (labs from an inventory)
    sip: str | None = None    # the expected SIP URI when not sip:alias@SIP_DOMAIN
    entry: dict[str, Any] | None = None   # the inventory's user entry (labs from an inventory)

    @property
    def im_address(self) -> str:
        return self.im if self.im is not None else f"{self.alias}@{IM_DOMAIN}"

    @property
    def im_local(self) -> str:
        return self.im_address.partition("@")[0]

    @property
    def im_domain(self) -> str:
        return self.im_address.partition("@")[2]

    @property
    def profile_url(self) -> str:
        return f"http://{self.im_domain}/instmsg/aliases/{self.im_local}"

    @property
    def sip_uri(self) -> str:
        return self.sip if self.sip is not None else f"sip:{self.alias}@{SIP_DOMAIN}"


@dataclass
class _AddressBook:
    """How the contact lists of an estate spell their entries (the seeded list builder's vocabulary).

    ``colleague(rng, user)`` is the address a list holds for another user of the
    estate (usually their IM address, now and then another domain of theirs);
    ``partners`` are mappable addresses outside the organisation, tried in
    order; ``table_entry(rng)`` is an address mapped by the exact table, with
    its display name.
    """

    colleague: Callable[[random.Random, _User], str]
    partners: list[str]
    table_entry: Callable[[random.Random], tuple[str, str]]


def _random_users(rng: random.Random, n_users: int) -> list[_User]:
    """``n_users`` people with unique aliases, names (a few hostile), SIDs and AD GUIDs."""
    users: list[_User] = []
    taken: set[str] = set()
    for i in range(n_users):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        base = (_ascii(first)[:1] + _ascii(last)) or "user"
        alias, k = base, 1
        while alias in taken:
            k += 1
            alias = f"{base}{k}"
        taken.add(alias)
        display = f"{first} {last}"
        if rng.random() < 0.03:
            display = rng.choice(HOSTILE_NAMES[:6]) or display
        users.append(_User(alias, display, f"{DOMAIN_SID}-{1104 + i}",
                           "{" + str(uuid.UUID(int=rng.getrandbits(128), version=4)).upper() + "}"))
    return users


def _roam(rng: random.Random, users: list[_User], names: list[str], users_per_client: int) -> None:
    """Give every client profiles: each user a machine, then users on 1..3 machines."""
    clients, n_users = len(names), len(users)
    for i, u in enumerate(users):
        u.clients.append(names[i % clients])
    for i in range(n_users, clients):
        rng.choice(users).clients.append(names[i])
    want = clients * users_per_client
    have = sum(len(u.clients) for u in users)
    while have < want:
        u = rng.choice(users)
        c = rng.choice(names)
        if c not in u.clients and len(u.clients) < 3:
            u.clients.append(c)
        have += 1


def _assign_waves(users: list[_User]) -> None:
    """Cut the users into WAVES by position (10%, 30%, the rest)."""
    cum, waves = 0.0, []
    for w, frac in WAVES:
        cum += frac
        waves.append((w, cum))
    for i, u in enumerate(users):
        pos = (i + 0.5) / len(users)
        u.wave = next(w for w, c in waves if pos <= c + 1e-9)


def _partners(rng: random.Random, domain: str) -> list[str]:
    """About 400 distinct partner addresses in ``domain``."""
    partners = [f"{_ascii(rng.choice(FIRST))}.{_ascii(rng.choice(LAST))}{n}@{domain}" for n in range(400)]
    return list(dict.fromkeys(partners))


def _contact_lists(rng: random.Random, users: list[_User], contacts: int, book: _AddressBook) -> None:
    """Fill each user's contact lists, groups and logged-on flags on each of their machines.

    Some lists are empty, some near and over LCS_LIMIT, the rest around
    ``contacts``; entries are colleagues, partners, outsiders, table entries
    and malformed addresses, with hostile and very long names now and then;
    the list on a second machine mostly repeats the first (a few missing,
    letter case changed: duplicates across machines).
    """
    partners = book.partners
    for idx, u in enumerate(users):
        kind = rng.random()
        if idx % 23 == 5 or kind < 0.08:
            size = 0
        elif idx % 17 == 3:
            size = rng.randint(LCS_LIMIT - 5, LCS_LIMIT + 25)  # near and over the limit
        else:
            size = max(1, int(rng.gauss(contacts, contacts / 3)))
        base: list[dict[str, Any]] = []
        seen: set[str] = set()
        want_others = min(len(users), size * 2 + 5)
        others = [o for o in rng.sample(users, want_others) if o is not u]
        oi = pi = 0
        while len(base) < size:
            r = rng.random()
            if r < 0.6 and oi < len(others):
                o = others[oi]
                oi += 1
                addr = book.colleague(rng, o)
                name = o.display_name if rng.random() < 0.9 else rng.choice(HOSTILE_NAMES)
            elif r < 0.85 and pi < len(partners):
                addr, pi = partners[pi], pi + 1
                name = addr.split("@")[0].replace(".", " ").title()
            elif r < 0.95:
                addr = f"{_ascii(rng.choice(FIRST))}{rng.randint(1, 999)}@{rng.choice(OUTSIDER_DOMAINS)}"
                name = rng.choice(HOSTILE_NAMES) if rng.random() < 0.3 else ""
            elif r < 0.97:
                addr, name = book.table_entry(rng)
            else:
                addr, name = rng.choice(MALFORMED), "Broken entry"
            if addr.lower() in seen:
                if oi >= len(others) and pi >= len(partners):
                    break
                continue
            seen.add(addr.lower())
            if rng.random() < 0.01:
                name = "Very long name " + "x" * 300
            base.append({"address": addr, "display_name": name})
        group_names: list[str] = []
        if base and rng.random() < 0.6:
            group_names = rng.sample(GROUP_NAMES, rng.randint(1, 3))
            if rng.random() < 0.02:
                group_names.append("G" * 140)
        for n, client in enumerate(u.clients):
            if n == 0:
                lst = [dict(c) for c in base]
            else:  # another machine: mostly the same list, a few missing, case changed
                lst = []
                for c in base:
                    if rng.random() < 0.15:
                        continue
                    c = dict(c)
                    if rng.random() < 0.05:
                        local, _, dom = c["address"].partition("@")
                        c["address"] = local.capitalize() + "@" + dom.upper()
                    lst.append(c)
            u.contacts[client] = lst
            grp: dict[str, list[str]] = {}
            for g in group_names:
                members = [c["address"] for c in lst if rng.random() < 0.3]
                grp[g] = members
            u.groups[client] = grp
            u.logged_on[client] = rng.random() < 0.3


def _machine_info(rng: random.Random, names: list[str]) -> dict[str, dict[str, str]]:
    """Each client's OS (XP SP2/SP3 or 2000 SP4) and Messenger (MESSENGERS key), as an estate
    of that era had them. The service pack comes from the name's hash, not ``rng``, so the
    rest of a seeded estate is what it was before service packs were modelled."""
    machine_info = {}
    for c in names:
        os_name = "Windows XP Professional" if rng.random() < 0.7 else "Windows 2000 Professional"
        if os_name.startswith("Windows XP"):
            m = rng.choices(["wm47", "msn47", "wm51"], [0.8, 0.15, 0.05])[0]
            sp = "Service Pack 3" if hashlib.sha256(c.encode()).digest()[0] % 2 else "Service Pack 2"
        else:
            m = rng.choices(["msn46", "msn47", "wm51"], [0.5, 0.45, 0.05])[0]
            sp = "Service Pack 4"
        machine_info[c] = {"os": os_name, "service_pack": sp, "messenger": m}
    return machine_info


MESSENGER_POLICY = r"HKLM\SOFTWARE\Policies\Microsoft\Messenger\Client"
MESSENGER_SERVICE_POLICY = r"HKLM\SOFTWARE\Microsoft\MessengerService\Policies"
#: How an Exchange 2000 IM estate's clients hold Messenger's policy values before the migration
#: (docs/messenger-signin.md): most have none; some ExchangeConn from the Exchange IM rollout (1
#: Exchange always primary, 2 Exchange only, which keeps a client off LCS); a few a pilot LCS
#: server's settings, or a transport typed by hand as text; some an unrelated policy.
SIGNIN_SEEDS = (("exchange_primary", 0.12), ("exchange_only", 0.08), ("pilot", 0.06), ("typed_transport", 0.04),
                ("autorun_policy", 0.15))


def _signin_seeds(seed: int, names: list[str], sip_domain: str) -> dict[str, dict[str, Any]]:
    """The Messenger policy values of each seeded client: {name: {"signin_seed": kind, "policies":
    [[key, [[value, type, data], ...]], ...]}}. Drawn from its own random stream, so the
    rest of the estate is what the seed always gave; a lab of three clients or more has at
    least one client with wrong values (inventory_clients has something to report)."""
    rng = random.Random(f"signin-{seed}")
    kinds: dict[str, str] = {}
    for c in names:
        r, acc = rng.random(), 0.0
        for kind, share in SIGNIN_SEEDS:
            acc += share
            if r < acc:
                kinds[c] = kind
                break
    if len(names) >= 3 and not any(k in ("exchange_only", "pilot", "typed_transport") for k in kinds.values()):
        kinds[names[-1]], kinds[names[-2]] = "exchange_only", "pilot"
    values = {
        "exchange_primary": [[MESSENGER_SERVICE_POLICY, [["ExchangeConn", "REG_DWORD", 1]]]],
        "exchange_only": [[MESSENGER_SERVICE_POLICY, [["ExchangeConn", "REG_DWORD", 2]]]],
        "pilot": [[MESSENGER_POLICY, [["ServerAddress", "REG_SZ", f"lcspilot.{sip_domain}"],
                                      ["Transport", "REG_DWORD", 2], ["ConfigurationMode", "REG_DWORD", 1]]]],
        "typed_transport": [[MESSENGER_POLICY, [["Transport", "REG_SZ", "TLS"], ["PreventAutoRun", "REG_DWORD", 1]]]],
        "autorun_policy": [[MESSENGER_POLICY, [["PreventAutoRun", "REG_DWORD", 1]]]],
    }
    return {c: {"signin_seed": k, "policies": values[k]} for c, k in kinds.items()}


def _plan(clients: int, users_per_client: int, contacts: int, seed: int) -> tuple[list[str], list[_User], dict]:
    """Decide everything (pure, seeded): client names and OS/Messenger, users, lists."""
    rng = random.Random(seed)
    width = max(4, len(str(clients)))
    names = [f"pc{i:0{width}d}" for i in range(1, clients + 1)]
    n_users = max(1, round(clients * users_per_client / 1.25))
    users = _random_users(rng, n_users)
    _roam(rng, users, names, users_per_client)
    _assign_waves(users)
    partners = _partners(rng, PARTNER_IM_DOMAIN)
    table_partner = f"ceo@{PARTNER_IM_DOMAIN.replace('im.', 'chat.')}"

    def colleague(rng: random.Random, o: _User) -> str:
        dom = IM_DOMAIN if rng.random() < 0.85 else SMTP_DOMAIN
        return f"{o.alias}@{dom}"

    _contact_lists(rng, users, contacts, _AddressBook(colleague, partners, lambda rng: (table_partner, "Fabrikam CEO")))
    machine_info = _machine_info(rng, names)
    for c, extra in _signin_seeds(seed, names, SIP_DOMAIN).items():
        machine_info[c].update(extra)
    return names, users, {"machines": machine_info, "table_partner": table_partner}


#: RVP user aliases that are awkward on a command line, in WQL or in a SIP URI (percent-encoded in the
#: URL as an RVP client writes it): some map (a quote, an ampersand), most cannot.
HOSTILE_ALIASES = ["o%27brien", "r%26d", "100%25", "caret%5Eman", "zo%C3%AB", "quote%22d", "tom%USERNAME%",
                   "%E6%9D%8E%E4%BC%9F", "semi%3Bcolon%29"]
ACL_OUTSIDER_DOMAIN = "im.litware.com"   # an IM domain outside the organisation that sip_mapping does not know
MALFORMED_ACES = ["(X;;PR;;;WD)", "A;;PRST;;;WD", "(A;;QQ;;;WD)", "(D;;PRST;;;)", "(A;;PRST;;;10.0.0.7)"]


def _ace_values(principal: str, presence: str | None, send_to: str | None) -> list[str]:
    """The msExchIMACL values (docs/permissions.md) giving ``principal`` these rights (None:
    this principal's ACEs say nothing of that right): a grant and a deny ACE as needed."""
    granted = "".join(c for c, v in (("PR", presence), ("ST", send_to)) if v == "Allow")
    denied = "".join(c for c, v in (("PR", presence), ("ST", send_to)) if v == "Deny")
    out = [f"(A;;{granted};;;{principal})"] if granted else []
    return out + ([f"(D;;{denied};;;{principal})"] if denied else [])


def _seed_permissions(est: "_Estate") -> dict[str, dict[str, Any]]:
    """Each user's Exchange IM allow and block list (seeded per user from the lab's seed, apart
    from the other draws): msExchIMACL values and, in source terms, the entries LCS should get.

    About a third of the users never changed their privacy settings (no msExchIMACL). The
    others have an everyone entry (allow, or presence only: nobody may message them
    unasked), colleagues allowed or blocked (one right or both), people and domains outside
    the organisation (a partner sip_mapping knows, an outsider it does not), now and then an
    alias with quotes, ``&``, ``%``, ``^`` or Unicode, a value no reader can parse, or an RVP
    right LCS has no equivalent for (the second user with a list always has an unreadable
value). Entries list each principal with both rights filled
    in the way docs/permissions.md describes (a right the principal's ACEs leave out comes
    from its domain's entry, else everyone's, else Allow).
    """
    domains = {str(k).lower() for k in (est.sip_mapping.get("domains") or {})}
    own = {u.im_domain.lower() for u in est.users}
    partner = next((d for d in sorted(domains) if d not in own and d.startswith("im.")),
                   next((d for d in sorted(domains) if d not in own), PARTNER_IM_DOMAIN))
    out: dict[str, dict[str, Any]] = {}
    for u in est.users:
        rng = random.Random(f"permissions:{est.seed}:{u.alias}")
        if rng.random() < 0.35:
            out[u.alias] = {"acl": [], "entries": []}
            continue
        principals: list[tuple[str, dict[str, Any]]] = []   # (msExchIMACL principal, entry)
        r = rng.random()
        if r < 0.6:
            everyone = ("Allow", "Allow")
        elif r < 0.8:
            everyone = ("Allow", "Deny")
        else:
            everyone = None
        if everyone is not None:
            principals.append(("WD", {"type": "All", "presence": everyone[0], "communication": everyone[1]}))
        doms: dict[str, tuple[str, str]] = {}
        if rng.random() < 0.3:
            d = rng.choice([partner, ACL_OUTSIDER_DOMAIN, u.im_domain])
            doms[d] = rng.choice([("Deny", "Deny"), ("Allow", "Deny"), ("Allow", "Allow")])
            principals.append((d, {"type": "Domain", "domain": d, "presence": doms[d][0],
                                   "communication": doms[d][1]}))
        people: list[str] = []
        others = [o for o in est.users if o is not u]
        for o in rng.sample(others, min(len(others), rng.randint(0, 4))):
            people.append(f"http://{o.im_domain}/instmsg/aliases/{o.im_local}")
        if rng.random() < 0.3:
            people.append(f"http://{partner}/instmsg/aliases/{_ascii(rng.choice(FIRST))}.{_ascii(rng.choice(LAST))}")
        if rng.random() < 0.25:
            people.append(f"http://{ACL_OUTSIDER_DOMAIN}/instmsg/aliases/{_ascii(rng.choice(FIRST))}{rng.randint(1, 99)}")
        if rng.random() < 0.15:
            people.append(f"http://{u.im_domain}/instmsg/aliases/{rng.choice(HOSTILE_ALIASES)}")
        for url in dict.fromkeys(people):
            host = url.split("/")[2]
            fallback = doms.get(host) or everyone or ("Allow", "Allow")
            presence = rng.choice(["Allow", "Deny", None])
            send_to = rng.choice(["Allow", "Deny"] if presence is None else ["Allow", "Deny", None])
            principals.append((url, {"type": "User", "url": url, "presence": presence or fallback[0],
                                     "communication": send_to or fallback[1], "_rights": (presence, send_to)}))
        acl: list[str] = []
        entries = []
        for principal, entry in principals:
            rights = entry.pop("_rights", (entry["presence"], entry["communication"]))
            acl.extend(_ace_values(principal, *rights))
            entries.append(entry)
        if rng.random() < 0.05 or len(out) == 1 + len([1 for v in out.values() if not v["acl"]]):
            acl.append(rng.choice(MALFORMED_ACES))   # now and then, and always on the lab's second list
        if rng.random() < 0.05 and everyone is None:
            acl.append("(A;;LI;;;WD)")   # an RVP right only: no LCS entry, reported
        rng.shuffle(acl)
        out[u.alias] = {"acl": acl, "entries": entries}
    return out


def _client_job(args: tuple[str, list[tuple[str, dict]]]) -> None:
    """Materialise a chunk of clients (runs in a worker process for big labs)."""
    lab_dir, jobs = args
    lab = Lab(Path(lab_dir))
    for name, spec in jobs:
        _write_client(lab, name, spec)


def _windows_skeleton(host: Any) -> None:
    """Create the folders of a fresh install of the host's Windows version (reg export and
    msiexec logs write into them and, like real Windows, fail without them) and its
    ``Windows NT\\CurrentVersion`` values."""
    for folder in host.windows.system_folders():
        host.fs.mkdir(folder)
    host.registry.bulk_set(WINDOWS_NT_KEY, host.windows.registry_values(
        str(host.config.get("os") or host.windows.name)))


def _real_dirs(base: Path, windows_paths: list[str]) -> list[Path]:
    """Real folders (ancestors first, each once) for ``C:\\...`` paths under a host's ``fs`` folder."""
    out: dict[Path, None] = {}
    for wp in windows_paths:
        cur = base / wp[0].upper()
        out.setdefault(cur)
        for part in wp[3:].split("\\"):
            if part:
                cur = cur / part
                out.setdefault(cur)
    return list(out)


def _write_client(lab: Lab, name: str, spec: dict) -> None:
    """Write one new client with the fewest file-system calls (the generator's hot path).

    The host is new and the lab not yet in use, so folders are made one
    ``mkdir`` each and files written in place (no temporary file and rename);
    the result is the same as through ``LabHost.fs`` and ``add_user_profile``.
    """
    host = lab.host(name)
    label, version, code = MESSENGERS[spec["messenger"]]
    fs_root = host.dir / "fs"
    exe_dir = r"C:\Program Files\Messenger"
    folders = [*host.windows.system_folders(), exe_dir, *(p["dir"] for p in spec["profiles"])]
    os.mkdir(host.dir)
    os.mkdir(fs_root)
    for d in _real_dirs(fs_root, folders):
        os.mkdir(d)
    with open(fs_root / "C" / "Program Files" / "Messenger" / "msmsgs.exe", "wb") as f:
        f.write(_exe(version, label))
    with host.bulk(atomic=False):
        host.registry.bulk_set(WINDOWS_NT_KEY, host.windows.registry_values(spec["os"]))
        host.registry.bulk_set(r"HKLM\SOFTWARE\Microsoft\MessengerService", [
            ("InstallationDirectory", "REG_SZ", exe_dir)])
        for key, values in spec.get("policies") or ():
            host.registry.bulk_set(key, [tuple(v) for v in values])
        if code:
            host.products.add(code, label, version, install_location=exe_dir + "\\\\")
        for p in spec["profiles"]:
            hive = p["dir"] + "\\NTUSER.DAT"
            real = fs_root.joinpath("C", *[x for x in p["dir"][3:].split("\\") if x], "NTUSER.DAT")
            with open(real, "wb") as f:
                f.write(hive_image(p["items"]))
            host.registry.bulk_set(r"HKLM\SOFTWARE\Microsoft\Windows NT\CurrentVersion\ProfileList" + "\\"
                                   + p["sid"], [("ProfileImagePath", "REG_EXPAND_SZ", "%SystemDrive%" + p["dir"][2:]),
                                                ("Flags", "REG_DWORD", 0), ("State", "REG_DWORD", 0)])
            if p["logged_on"]:
                host.registry.load_hive(p["sid"], hive, in_use=True)


_exes: dict[tuple[str, str], bytes] = {}


def _exe(version: str, label: str) -> bytes:
    """msmsgs.exe of a Messenger version (built once per process)."""
    b = _exes.get((version, label))
    if b is None:
        b = _exes[(version, label)] = make_exe(version, product_name=label, description=label)
    return b


def _hive_items(u: _User, client: str) -> list:
    prof = f"{CONTACTS_KEY}\\{u.profile_url}"
    items: list = [(r"Software\Microsoft\MessengerService", [("FirstTimeUser", "REG_DWORD", 0)]),
                   (prof, [("SigninName", "REG_SZ", u.im_address)]),
                   (prof + r"\Contacts", [(c["address"], "REG_SZ", c["display_name"]) for c in u.contacts[client]])]
    for g, members in u.groups[client].items():
        items.append((prof + "\\Groups\\" + g, [(m, "REG_SZ", "") for m in members]))
    return items


def _params(clients: int, users_per_client: int, contacts: int, seed: int) -> dict[str, int]:
    return {"clients": clients, "users_per_client": users_per_client, "contacts": contacts, "seed": seed}


@dataclass
class _Estate:
    """Everything a lab is written from, decided (seeded) before anything is written.

    ``servers`` are the lab.json entries of the non-client hosts in order
    (role ``exchange_im``, ``lcs`` with its ``server_dn``, or ``member``: a
    plain Windows machine); the first Exchange IM server homes every user and
    the first LCS server is the one ``runner lab verify`` reads.
    """

    seed: int
    params: dict[str, Any]
    clients: list[str]
    users: list[_User]
    machines: dict[str, dict[str, str]]
    servers: dict[str, dict[str, Any]]
    domains: dict[str, str]
    sip_mapping: dict[str, Any]
    packages: list[str]
    inventory: dict[str, Any]
    header: str

    def role(self, role: str) -> list[str]:
        return [n for n, c in self.servers.items() if c["role"] == role]


GENERATED_HEADER = "# Generated by `runner lab init`; regenerate rather than edit.\n"
PACKAGE_UNC = "\\\\%s\\%s\\%s" % (*PACKAGE_SHARE, PACKAGE_NAME)


def generate(directory: Path | str, *, clients: int = 50, users_per_client: int = 2, contacts: int = 20,
             seed: int = 1, workers: int | None = None) -> Path:
    """Write a new lab into ``directory`` (must not exist or be empty); return the inventory path."""
    for n, v in (("clients", clients), ("users_per_client", users_per_client)):
        if v < 1:
            raise InputError(f"lab: {n} must be at least 1 (got {v})")
    if contacts < 0:
        raise InputError(f"lab: contacts must not be negative (got {contacts})")
    names, users, extra = _plan(clients, users_per_client, contacts, seed)
    est = _Estate(
        seed=seed, params=_params(clients, users_per_client, contacts, seed), clients=names, users=users,
        machines=extra["machines"],
        servers={EXCHANGE_HOST: {"role": "exchange_im", "address": "127.0.1.1", "os": ROLE_DEFAULT["exchange_im"]},
                 LCS_HOST: {"role": "lcs", "address": "127.0.1.2", "server_dn": LCS_SERVER_DN,
                            "os": ROLE_DEFAULT["lcs"]}},
        domains={"im": IM_DOMAIN, "smtp": SMTP_DOMAIN, "sip": SIP_DOMAIN, "ad": AD_BASE},
        sip_mapping=sip_mapping(extra["table_partner"]), packages=[PACKAGE_UNC],
        inventory=inventory(names, users, extra["table_partner"]), header=GENERATED_HEADER)
    return _write_lab(Path(directory), est, workers)


def _unc_parts(path: str) -> list[str] | None:
    """``\\\\server\\share\\dir\\file`` as [server, share, dir, file]; None when not a UNC file path."""
    if not path.startswith("\\\\"):
        return None
    parts = [x for x in path[2:].split("\\") if x]
    return parts if len(parts) >= 3 else None


def _write_lab(d: Path, est: _Estate, workers: int | None = None) -> Path:
    """Write the estate: lab.json, the clients (in worker processes for big labs), the servers,
    manifest.json and inventory.yml; return the inventory path."""
    hosts: dict[str, dict[str, Any]] = {}
    for i, n in enumerate(est.clients, start=1):
        hosts[n] = {"role": "client", "address": f"127.10.{i // 256}.{i % 256}", "os": est.machines[n]["os"],
                    "service_pack": est.machines[n]["service_pack"]}
    hosts.update(est.servers)
    shares: dict[str, dict[str, str]] = {}
    for unc in est.packages:
        server, share = _unc_parts(unc)[:2]  # type: ignore[index]
        shares.setdefault(server, {})[share] = f"shares/{server}/{share}"
    lab = Lab.create(d, {
        "seed": est.seed, "params": est.params, "domains": est.domains, "hosts": hosts, "shares": shares,
        "faults": {"seed": est.seed, "global": {k: 0.0 for k in (
            "drop", "timeout", "slow", "down", "msiexec_1618", "lcs_busy", "hive_locked")}, "hosts": {}}})
    # clients
    specs: dict[str, dict] = {n: {**est.machines[n], "profiles": []} for n in est.clients}
    for u in est.users:
        for c in u.clients:
            specs[c]["profiles"].append({"sid": u.sid, "dir": f"C:\\Documents and Settings\\{u.alias}",
                                         "logged_on": u.logged_on[c], "items": _hive_items(u, c)})
    jobs = list(specs.items())
    workers = workers if workers is not None else (min(os.cpu_count() or 1, 4) if len(est.clients) >= 400 else 1)
    pool: ProcessPoolExecutor | None = None
    futures = []
    if workers > 1:
        # clients are written by worker processes while this one writes the servers,
        # the manifest and the inventory (all workers are forked at the first submit,
        # before this process opens any SQLite database)
        size = max(50, len(jobs) // (workers * 4))
        pool = ProcessPoolExecutor(max_workers=workers)
        futures = [pool.submit(_client_job, (str(lab.path), jobs[i:i + size])) for i in range(0, len(jobs), size)]
    else:
        _client_job((str(lab.path), jobs))
    try:
        _write_servers_and_ground_truth(lab, est)
        for f in futures:
            f.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return lab.path / "inventory.yml"


def _write_servers_and_ground_truth(lab: Lab, est: _Estate) -> None:
    """The package share(s), Exchange IM server(s) and AD, LCS pool(s), other hosts, manifest.json
    and inventory.yml."""
    for unc in est.packages:
        parts = _unc_parts(unc)
        assert parts is not None
        folder = lab.share_path(parts[0], parts[1]).joinpath(*parts[2:-1])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / parts[-1]).write_bytes(messenger51_msi())
    exchange_hosts, lcs_hosts = est.role("exchange_im"), est.role("lcs")
    permissions = _seed_permissions(est)
    # Exchange IM server(s) and AD: the first one homes every user
    for i, name in enumerate(exchange_hosts):
        ex = lab.host(name)
        _windows_skeleton(ex)
        homed = est.users if i == 0 else []
        exchange.install_server(lab, ex, [exchange.ImUser(u.im_local, u.display_name, u.guid, u.sid, u.im_domain,
                                                          est.domains["smtp"], tuple(permissions[u.alias]["acl"]))
                                          for u in homed],
                                base_dn=est.domains["ad"])
    # LCS pool(s)
    for name in lcs_hosts:
        lcs = lab.host(name)
        _windows_skeleton(lcs)
        lcs.services.add(LCS_SERVICE, "Live Communications Server", state="RUNNING", start_type="AUTO_START",
                         binary_path=r'"C:\Program Files\Microsoft LC 2005\Server\RtcHost.exe"')
        LcsStore.initialise(lcs.dir / "lcs.db", server_dn=est.servers[name]["server_dn"]).close()
    for name in est.role("member"):
        _windows_skeleton(lab.host(name))
    # manifest and inventory
    manifest = {
        "format": "lab-manifest/1", "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "params": est.params, "lcs_limit": LCS_LIMIT,
        "exchange_server": exchange_hosts[0], "lcs_server": lcs_hosts[0],
        "lcs_server_dn": est.servers[lcs_hosts[0]]["server_dn"],
        # the SIP server the clients are to be pointed at (configure_messenger's default)
        "lcs_pool_fqdn": (est.inventory.get("all") or {}).get("vars", {}).get("lcs_pool_fqdn") or lcs_hosts[0],
        "ad_base": est.domains["ad"],
        "sip_mapping": est.sip_mapping,
        "users": {u.alias: {
            "display_name": u.display_name, "im_address": u.im_address, "sid": u.sid, "ad_guid": u.guid,
            "sip_uri": u.sip_uri, "wave": u.wave, "clients": u.clients, "profile_url": u.profile_url,
            "machines": {c: {"logged_on": u.logged_on[c], "contacts": u.contacts[c], "groups": u.groups[c]}
                         for c in u.clients},
            "permissions": permissions[u.alias]} for u in est.users},
        "machines": est.machines,
    }
    (lab.path / "manifest.json").write_text(json.dumps(manifest, ensure_ascii=False), encoding="utf-8")
    inv_path = lab.path / "inventory.yml"
    from runner.schemas import schema_header  # editors validate the generated inventory too

    inv_path.write_text(schema_header("inventory", inv_path) + est.header + dump_yaml(est.inventory),
                        encoding="utf-8")


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_YAML11_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}
# characters YAML may not hold raw or reads as line breaks / byte order marks
_NOT_YAML_PRINTABLE = re.compile("[^\x09\x0A\x0D\x20-\x7E\xA0-\u2027\u202A-\uD7FF\uE000-\uFEFE\uFF00-\uFFFD"
                                 "\U00010000-\U0010FFFF]")


def _flow(value: Any) -> str:
    """A YAML flow value: JSON (a subset of YAML), with characters YAML forbids escaped."""
    text = json.dumps(value, ensure_ascii=False)
    return _NOT_YAML_PRINTABLE.sub(lambda m: "\\u%04x" % ord(m.group()), text)


def _key(k: str) -> str:
    return k if _PLAIN_KEY.fullmatch(k) and k.lower() not in _YAML11_WORDS else _flow(k)


def dump_yaml(doc: dict[str, Any], indent: int = 0) -> str:
    """Block-style YAML for a generated document: mappings that hold mappings are
    blocks, everything else one flow (JSON) value per line.

    Same data as ``yaml.dump`` (``yaml.safe_load`` gives ``doc`` back), about 30x
    faster on a 10,000-client inventory, and one line per host or user.
    """
    out: list[str] = []
    pad = " " * indent
    for k, v in doc.items():
        if isinstance(v, dict) and any(isinstance(x, dict) for x in v.values()):
            out.append(f"{pad}{_key(str(k))}:\n")
            out.append(dump_yaml(v, indent + 2))
        else:
            out.append(f"{pad}{_key(str(k))}: {_flow(v)}\n")
    return "".join(out)


def sip_mapping(table_partner: str) -> dict[str, Any]:
    """The lab's sip_mapping variable (DOMAIN.md "Mapping contacts")."""
    return {"domains": {IM_DOMAIN: SIP_DOMAIN, SMTP_DOMAIN: SIP_DOMAIN, PARTNER_IM_DOMAIN: PARTNER_SIP_DOMAIN},
            "template": "sip:{local}@{domain}",
            "table": {table_partner: f"sip:ceo@{PARTNER_SIP_DOMAIN}"}}


def inventory(names: list[str], users: list[_User], table_partner: str) -> dict[str, Any]:
    """The inventory document of the lab (format of /tmp/interfaces.md)."""
    return {
        "all": {
            "vars": {"im_domain": IM_DOMAIN, "sip_mapping": sip_mapping(table_partner),
                     "lcs_home_server_dn": LCS_SERVER_DN, "lcs_pool_fqdn": f"{LCS_HOST}.{SIP_DOMAIN}",
                     "lab_dir": ".",
                     "messenger_package": PACKAGE_UNC,
                     "exchange_im_service": exchange.IM_SERVICE, "lcs_max_contacts_default": LCS_LIMIT},
            "children": {
                "clients": {"hosts": {n: {} for n in names}},
                "exchange_im_servers": {"hosts": {EXCHANGE_HOST: {}}},
                "lcs_servers": {"hosts": {LCS_HOST: {}}},
            },
        },
        "users": {u.alias: {"im_address": u.im_address, "display_name": u.display_name, "clients": list(u.clients),
                            "sid": u.sid, "ad_guid": u.guid, "wave": u.wave, "sip_uri": u.sip_uri,
                            "home_server": LCS_HOST} for u in users},
    }


# -- a lab from a real inventory ------------------------------------------------

def _applies_to_lab(name: str) -> bool:
    """Whether a variable applies to a lab host as it is. SSH settings and lab_dir do not, nor
    ``messenger_package_local``: that is the estate's real package on the control node,
    which the lab's msiexec could not install (``_lab_vars`` points it at the lab's own)."""
    return not name.startswith("ssh_") and name not in ("lab_dir", "messenger_package_local")


def _lab_vars(vars_: Mapping[str, Any], packages: list[str] | None = None) -> dict[str, Any]:
    """The variables of one scope (group or host) as the lab's inventory has them. A scope that
    pushes the package (``messenger_package_local``: its machines log on by key) pushes the
    lab's own package, and its lab sessions log on by key too, so the rehearsal takes the
    same path as the night (``packages``: the UNC paths the lab serves)."""
    out = {k: v for k, v in vars_.items() if _applies_to_lab(k)}
    if packages and vars_.get("messenger_package_local"):
        unc = vars_.get("messenger_package")
        parts = _unc_parts(unc if isinstance(unc, str) and unc in packages else packages[0])
        assert parts is not None
        out["messenger_package_local"] = "/".join(["shares", *parts])   # from the lab's inventory folder
        out.setdefault("lab_logon", "key")
    return out


def _dc_base(dn: str) -> str | None:
    """The ``DC=...`` tail of a DN (``...,DC=corp,DC=contoso,DC=com`` -> ``DC=corp,DC=contoso,DC=com``)."""
    parts = [p.strip() for p in re.split(r"(?<!\\),", dn)]
    tail: list[str] = []
    for part in reversed(parts):
        if not part.upper().startswith("DC="):
            break
        tail.insert(0, part)
    return ",".join(tail) or None


def _guid(value: str, alias: str, path: str) -> str:
    """``{GUID}`` in upper case (the form LCS and the manifest use)."""
    try:
        return "{" + str(uuid.UUID(value.strip().strip("{}"))).upper() + "}"
    except ValueError:
        raise InputError(f"user '{alias}': ad_guid {value!r} is not a GUID like "
                         "{01234567-0123-4567-89AB-CDEF01234567}", path) from None


def _inventory_users(inv: Inventory, rule: dict[str, Any]) -> list[_User]:
    """The inventory's users as lab users: its SIDs and GUIDs, or deterministic ones (from
    the alias) where it has none; the expected SIP URI is the override or the mapping."""
    sids = [u.sid for u in inv.users.values() if u.sid]
    domain_sid = Counter(s.rsplit("-", 1)[0] for s in sids).most_common(1)[0][0] if sids else DOMAIN_SID
    taken = {s.lower() for s in sids}
    users: list[_User] = []
    for alias, iu in inv.users.items():
        digest = uuid.uuid5(uuid.NAMESPACE_URL, "runner-lab-user:" + alias)
        sid = iu.sid
        rid = 1000 + digest.int % 1_000_000
        while sid is None or (not iu.sid and sid.lower() in taken):
            sid, rid = f"{domain_sid}-{rid}", rid + 1
        taken.add(sid.lower())
        guid = _guid(iu.ad_guid or str(digest), alias, inv.path)
        sip = iu.sip_uri or map_address(iu.im_address, rule, {}) or ""
        entry: dict[str, Any] = {"im_address": iu.im_address}
        if iu.display_name is not None:
            entry["display_name"] = iu.display_name
        entry.update({"clients": list(iu.clients), "sid": sid, "ad_guid": iu.ad_guid or guid})
        for k in ("wave", "sip_uri", "home_server"):
            if getattr(iu, k) is not None:
                entry[k] = getattr(iu, k)
        if iu.vars:
            entry["vars"] = dict(iu.vars)
        users.append(_User(alias, iu.display_name or alias, sid, guid, list(iu.clients), iu.wave,  # type: ignore[arg-type]
                           im=iu.im_address, sip=sip, entry=entry))
    return users


def _inventory_book(rng: random.Random, users: list[_User], rule: dict[str, Any]) -> _AddressBook:
    """Contacts spelled as the inventory's organisation would: colleagues by their IM address
    (now and then another domain the mapping sends to the same SIP domain), partners in a
    mapped domain that is no user's (else people of the users' IM domain who are not in the
    inventory), the mapping table's exact entries."""
    domains = {str(k).lower(): str(v).lower() for k, v in (rule.get("domains") or {}).items()}
    own = {u.im_domain.lower() for u in users}
    own_sip = {domains.get(d) for d in own}
    # partners: a mapped domain that is not the organisation's; failing that, people of the
    # organisation who are not in the inventory (mappable by domain, as partners are)
    main = Counter(u.im_domain.lower() for u in users).most_common(1)[0][0] if users else PARTNER_IM_DOMAIN
    partner_domain = next((d for d in domains if d not in own and domains[d] not in own_sip), main)
    partners = _partners(rng, partner_domain)
    table = [str(k) for k in (rule.get("table") or {})]

    def colleague(rng: random.Random, o: _User) -> str:
        if rng.random() >= 0.85:
            dom = o.im_domain.lower()
            alts = [d for d in domains if d != dom and dom in domains and domains[d] == domains[dom]]
            if alts:
                return f"{o.im_local}@{alts[0]}"
        return o.im_address

    def table_entry(rng: random.Random) -> tuple[str, str]:
        if table:
            addr = rng.choice(table)
            return addr, addr.split("@")[0].replace(".", " ").title()
        return f"{_ascii(rng.choice(FIRST))}{rng.randint(1, 999)}@{rng.choice(OUTSIDER_DOMAINS)}", ""

    return _AddressBook(colleague, partners, table_entry)


def _own_host_vars(inv: Inventory, host: str) -> dict[str, Any]:
    """The variables set on the host itself: its merged vars minus what its groups give."""
    h = inv.hosts[host]
    from_groups: dict[str, Any] = {}
    for g in h.groups:
        if g in inv.groups:
            from_groups.update(inv.groups[g].vars)
    return {k: v for k, v in h.vars.items() if k not in from_groups or from_groups[k] != v}


def _group_docs(inv: Inventory, packages: list[str] | None = None) -> dict[str, Any]:
    """``all`` with the inventory's group hierarchy, vars and host vars, minus what does not
    apply to the lab (SSH settings, addresses, connections); a group that is a child of
    several groups is defined once and referenced (``null``) elsewhere."""
    defined: set[str] = set()
    placed: set[str] = set()

    def group(name: str) -> dict[str, Any]:
        defined.add(name)
        g = inv.groups[name]
        doc: dict[str, Any] = {}
        vars_ = _lab_vars(g.vars, packages)
        if name == "all":
            vars_["lab_dir"] = "."
        if vars_:
            doc["vars"] = vars_
        if g.hosts:
            hosts: dict[str, Any] = {}
            for h in g.hosts:
                own = _lab_vars(_own_host_vars(inv, h), packages) if h not in placed else {}
                placed.add(h)
                hosts[h] = {"vars": own} if own else {}
            doc["hosts"] = hosts
        if g.children:
            doc["children"] = {c: None if c in defined else group(c) for c in g.children}
        return doc

    return group("all")


#: A file or folder name the lab can make on its share and Windows would take
#: (no ``<>:"/\|?*``, no control character, not ``.`` or ``..``, no trailing dot or space).
_WINDOWS_NAME = re.compile(r'[^<>:"/\\|?*\x00-\x1f]*[^<>:"/\\|?*\x00-\x1f. ]')


def _unmappable(value: Any) -> str | None:
    """Why the lab cannot serve ``value`` as the package's UNC path (None when it can)."""
    if not isinstance(value, str):
        return "is not a string"
    parts = _unc_parts(value)
    if parts is None:
        return "is not a UNC file path (\\\\server\\share\\...\\file.msi)"
    for part in parts:
        if not _WINDOWS_NAME.fullmatch(part) or len(part.encode("utf-8")) > 255:
            return f"has a name the lab cannot make on its share: {part[:40]!r}" + ("..." if len(part) > 40 else "")
    return None


def _package_paths(inv: Inventory, clients: list[str]) -> list[str]:
    """UNC paths of the Messenger 5.1 package the clients' ``messenger_package`` names
    (the runner's default where unset; a templated path is left out). A path the lab
    cannot put on a share of its own is an InputError at the variable's line."""
    out: dict[str, None] = {}
    for c in clients:
        v = inv.hosts[c].vars.get("messenger_package", PACKAGE_UNC)
        if isinstance(v, str) and "{{" in v:
            continue
        why = _unmappable(v)
        if why:
            raise _variable_error(inv, "messenger_package", v,
                                  f"host {c!r}: messenger_package {_shown(v)} {why}; the lab serves the package from "
                                  f"a share it makes, so it must be a UNC file path such as {PACKAGE_UNC}")
        out.setdefault(v)
    return list(out) or [PACKAGE_UNC]


def _shown(value: Any) -> str:
    """A value as a message quotes it: as written when printable, else repr; long ones cut."""
    text = f"'{value}'" if isinstance(value, str) and value.isprintable() else repr(value)
    return text if len(text) <= 100 else text[:97] + "..."


def _variable_error(inv: Inventory, name: str, value: Any, message: str) -> InputError:
    """``message`` located at the first ``name: value`` in the inventory file."""
    from yaml.nodes import MappingNode, SequenceNode

    from runner.loader import read_yaml

    doc = read_yaml(inv.path)
    stack = [doc.root] if doc.root is not None else []
    while stack:
        node = stack.pop(0)
        if isinstance(node, MappingNode):
            for k, v in node.value:
                if getattr(k, "value", None) == name and (not isinstance(value, str) or v.value == value):
                    return InputError(message, inv.path, v.start_mark.line + 1, v.start_mark.column + 1)
                stack.append(v)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return InputError(message, inv.path)


def _plan_from_inventory(inv: Inventory, contacts: int, seed: int) -> _Estate:
    """The estate of ``inv`` (same hosts, groups, users, variables) with seeded synthetic
    contact lists, Messenger versions and logged-on users."""
    rng = random.Random(seed)
    rule = dict(inv.vars.get("sip_mapping") or {})
    users = _inventory_users(inv, rule)
    lcs = list(dict.fromkeys([*inv.group_hosts("lcs_servers"), *([inv.vars["lcs_server"]] if inv.vars.get(
        "lcs_server") else []), *(u.home_server for u in inv.users.values() if u.home_server)]))
    exchange_hosts = list(dict.fromkeys([*inv.group_hosts("exchange_im_servers"), *(
        [inv.vars["exchange_im_server"]] if inv.vars.get("exchange_im_server") else [])]))
    for role, group, found in (("an Exchange IM server", "exchange_im_servers", exchange_hosts),
                               ("an LCS server", "lcs_servers", lcs)):
        if not found:
            raise InputError(f"the inventory has no {role} (group {group}); the lab needs one to rehearse on", inv.path)
        unknown = [h for h in found if h not in inv.hosts]
        if unknown:
            raise InputError(f"{role} {unknown[0]!r} is not a host of the inventory", inv.path)
    servers = set(lcs) | set(exchange_hosts)
    user_clients = {c for u in inv.users.values() for c in u.clients}
    for c in sorted(user_clients & servers):
        raise InputError(f"host {c!r} is both a server and a user's client; the lab cannot model that", inv.path)
    client_set = set(inv.group_hosts("clients")) | user_clients
    clients = [h for h in inv.hosts if h in client_set and h not in servers]
    _contact_lists(rng, users, contacts, _inventory_book(rng, users, rule))
    machines = _machine_info(rng, clients)
    im_domain = Counter(u.im_domain.lower() for u in users).most_common(1)[0][0] if users else IM_DOMAIN
    ad_base = (_dc_base(str(inv.vars.get("lcs_home_server_dn") or ""))
               or _dc_base("DC=" + ",DC=".join(im_domain.removeprefix("im.").split("."))) or AD_BASE)
    mapped = {str(k).lower(): str(v) for k, v in (rule.get("domains") or {}).items()}.get(im_domain)
    sip_domain = smtp_domain = mapped or ".".join(x[3:] for x in ad_base.split(","))
    for c, extra in _signin_seeds(seed, clients, sip_domain).items():
        machines[c].update(extra)
    entries: dict[str, dict[str, Any]] = {}
    n = 0
    for h in inv.hosts:
        if h in servers or h not in client_set:
            n += 1
            role = "lcs" if h in lcs else "exchange_im" if h in exchange_hosts else "member"
            entries[h] = {"role": role, "address": f"127.0.{1 + n // 256}.{n % 256}", "os": ROLE_DEFAULT[role]}
    for i, h in enumerate(lcs):
        dn = inv.vars.get("lcs_home_server_dn") if i == 0 else None
        entries[h]["server_dn"] = str(dn) if isinstance(dn, str) and dn and "{{" not in dn else (
            f"CN=LC Services,CN=Microsoft,CN={h},CN=Pools,CN=RTC Service,CN=Microsoft,CN=System,{ad_base}")
    # the first Exchange IM server and the first LCS server lead (the manifest names them)
    servers_cfg = {h: entries[h] for h in [exchange_hosts[0], lcs[0], *entries] if h in entries}
    packages = _package_paths(inv, clients)
    doc = {"all": _group_docs(inv, packages), "users": {u.alias: u.entry for u in users}}
    header = (f"# Generated by `runner lab init --from-inventory {inv.path}`: its hosts, groups, users and\n"
              "# variables (SSH settings left out), on a lab. Regenerate rather than edit.\n")
    return _Estate(seed=seed, params={"from_inventory": inv.path, "clients": len(clients), "contacts": contacts,
                                      "seed": seed},
                   clients=clients, users=users, machines=machines, servers=servers_cfg,
                   domains={"im": im_domain, "smtp": smtp_domain, "sip": sip_domain, "ad": ad_base},
                   sip_mapping=rule, packages=packages, inventory=doc, header=header)


def generate_from_inventory(directory: Path | str, inventory_path: Path | str, *, contacts: int = 20,
                            seed: int = 1) -> Path:
    """Write a new lab shaped like the inventory at ``inventory_path``; return the lab's inventory path.

    The lab has the inventory's host names, groups, users (SIDs and AD GUIDs
    generated from the alias where missing) and variables (minus SSH
    settings), with seeded contact lists built as for a random lab
    (colleagues are the inventory's users). A bad inventory raises the
    loader's InputError/InputErrors (exit 4).
    """
    return _write_lab(Path(directory), _inventory_plan(inventory_path, contacts, seed))


def _inventory_plan(inventory_path: Path | str, contacts: int, seed: int) -> _Estate:
    """The lab the inventory at ``inventory_path`` makes; every problem of it raised, nothing written."""
    if contacts < 0:
        raise InputError(f"lab: contacts must not be negative (got {contacts})")
    from runner.loader import load_inventory

    return _plan_from_inventory(load_inventory(inventory_path), contacts, seed)


def ensure_plugin_lab(inventory_path: str | Path) -> None:
    """Generate the lab a ``plugin: lab`` inventory names, unless it exists (``runner apply``
    calls this before loading the inventory; loading itself never writes)."""
    from runner.errors import InputError
    from runner.loader import lab_plugin_settings

    settings = lab_plugin_settings(inventory_path)
    if settings is None:
        return
    try:
        ensure_lab(Path(settings["dir"]), clients=settings["clients"], users_per_client=settings["users_per_client"],
                   contacts=settings["contacts"], seed=settings["seed"])
    except OSError as exc:
        raise InputError(f"cannot create the lab in {settings['dir']}: {exc.strerror or exc}",
                         str(inventory_path)) from None


def ensure_lab(directory: Path | str, *, clients: int, users_per_client: int, contacts: int, seed: int) -> Path:
    """Create the lab at ``directory`` unless it exists; return its inventory path.

    Safe when several processes call it at once: they serialise on
    ``<directory>.lock`` and the lab is built in a temporary directory then
    renamed into place. An existing lab is kept even if its parameters differ
    (regenerate with ``runner lab init --force``).
    """
    return _create_once(directory, lambda tmp: generate(tmp, clients=clients, users_per_client=users_per_client,
                                                        contacts=contacts, seed=seed))


def _create_once(directory: Path | str, build: Callable[[Path], Path]) -> Path:
    """Run ``build`` into a temporary directory and rename it to ``directory``, under
    ``<directory>.lock``, unless a lab is already there; return the inventory path."""
    d = Path(directory).absolute()
    inv = d / "inventory.yml"
    if inv.is_file():
        return inv
    d.parent.mkdir(parents=True, exist_ok=True)
    with open(str(d) + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if inv.is_file():
                return inv
            if d.exists() and any(d.iterdir()):
                raise InputError(f"{d} exists but holds no lab (inventory.yml missing); "
                                 "remove it or run `runner lab init --force`")
            tmp = d.with_name(f".{d.name}.tmp{os.getpid()}")
            if tmp.exists():
                shutil.rmtree(tmp)
            try:
                build(tmp)
            except BaseException:
                close_thread_connections()
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            close_thread_connections()
            if d.exists():
                d.rmdir()
            os.rename(tmp, d)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return inv


def _remove(d: Path) -> None:
    with open(str(d) + ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(d)
        fcntl.flock(lock, fcntl.LOCK_UN)


def init_lab(directory: Path | str, *, clients: int, users_per_client: int, contacts: int, seed: int,
             force: bool = False) -> Path:
    """``runner lab init``: like ensure_lab, but ``force`` replaces an existing lab."""
    d = Path(directory).absolute()
    if force and d.exists():
        _remove(d)
    return ensure_lab(d, clients=clients, users_per_client=users_per_client, contacts=contacts, seed=seed)


def init_lab_from_inventory(directory: Path | str, inventory_path: Path | str, *, contacts: int, seed: int,
                            force: bool = False) -> Path:
    """``runner lab init --from-inventory``: create the lab unless one exists (``force``
    replaces it). The lab is planned from the inventory before anything is written or
    removed (not even ``DIR.lock``), so an inventory the lab cannot copy (a package path
    it cannot serve, no server) leaves the disk, and an old lab, as they were."""
    plan = _inventory_plan(inventory_path, contacts, seed)
    d = Path(directory).absolute()
    if force and d.exists():
        _remove(d)
    return _create_once(d, lambda tmp: _write_lab(tmp, plan))
