"""Exchange IM address -> LCS SIP URI, by the organisation's rule in the inventory.

The rule (DOMAIN.md, "Mapping contacts") is the ``sip_mapping`` variable::

    sip_mapping:
      table:   {"bob@im.fabrikam.com": "sip:bob@fabrikam.com"}   # exact, first
      domains: {im.contoso.com: contoso.com}                     # IM domain -> SIP domain
      template: "sip:{local}@{domain}"                           # then this

Lookup order for one address: the exact ``table`` (case-insensitive), then an
inventory user whose ``im_address`` it is and who has an explicit ``sip_uri``
(so contacts follow a user's override), then ``domains`` + ``template``.
A user's own ``vars.sip_mapping`` is merged over the inventory's (tables and
domains key by key, template replaced). The result is validated; anything
that maps to nothing or to an invalid URI is an :class:`Unmappable` with a
reason, never dropped silently.

Example::

    >>> m = SipMapping.from_vars({"domains": {"im.contoso.com": "contoso.com"}})
    >>> m.map("alice@im.contoso.com").uri
    'sip:alice@contoso.com'
"""
from __future__ import annotations

import functools
import ipaddress
import re
import string
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from runner.model import Inventory, User

DEFAULT_TEMPLATE = "sip:{local}@{domain}"
#: MSFT_SIPESUserContactData.SIPURI maximum length (doc).
MAX_SIP_URI = 454

# RFC 3261 "user" characters (unreserved, user-unreserved, escaped), minus the
# ones we refuse because they only ever come from damaged data: quotes,
# whitespace, control characters, and cmd.exe metacharacters "|<>^.
_USER_RE = re.compile(r"^(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2})+\Z")
_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\Z")
_ADDRESS_RE = re.compile(r"^([^@\s]+)@([^@\s]+)\Z")


@dataclass(frozen=True)
class Mapped:
    """An address that maps: its SIP URI and which rule produced it."""

    address: str
    uri: str
    rule: str  # "table", "user", "domain", "override"


@dataclass(frozen=True)
class Unmappable:
    """An address that maps to nothing usable, and why (shown in the run's report)."""

    address: str
    reason: str


MapResult = Mapped | Unmappable

#: The fields a ``template`` may use.
TEMPLATE_FIELDS = ("local", "domain", "im_domain", "address")
_RULE_KEYS = ("table", "domains", "template")


def rule_problems(rule: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """What is wrong with a ``sip_mapping`` value, as (path inside it, message) pairs.

    Checked when the inventory loads, because a wrong rule does not fail a
    task: it maps contacts to nothing (or to the wrong URI) for every user,
    and the night would go on. The rule is a mapping of ``table`` (IM address
    -> valid SIP URI), ``domains`` (IM domain -> SIP domain, both DNS names)
    and ``template`` (a ``sip:`` URI using only ``{local}``, ``{domain}``,
    ``{im_domain}``, ``{address}``, and ``{local}`` or ``{address}`` at least,
    that gives a valid URI for a sample address).
    """
    if not isinstance(rule, Mapping):
        return [((), f"sip_mapping must be a mapping with {', '.join(_RULE_KEYS)}, not "
                      f"{type(rule).__name__ if rule is not None else 'null'}")]
    out: list[tuple[tuple[str | int, ...], str]] = []
    for key in rule:
        if key not in _RULE_KEYS:
            out.append(((key,), f"unknown key {key!r} in sip_mapping (known: {', '.join(_RULE_KEYS)})"))
    table = rule.get("table")
    if table is not None and not isinstance(table, Mapping):
        out.append((("table",), "sip_mapping.table must be a mapping of IM address -> SIP URI"))
    elif table:
        for address, uri in table.items():
            if not isinstance(address, str) or not _ADDRESS_RE.match(address):
                out.append((("table", address), f"sip_mapping.table: {address!r} is not an IM address"))
            reason = validate_sip_uri(uri) if isinstance(uri, str) else "not a string"
            if reason:
                out.append((("table", address), f"sip_mapping.table[{address!r}]: {reason}"))
    domains = rule.get("domains")
    if domains is not None and not isinstance(domains, Mapping):
        out.append((("domains",), "sip_mapping.domains must be a mapping of IM domain -> SIP domain"))
    elif domains:
        for im_domain, sip_domain in domains.items():
            for what, value in (("IM domain", im_domain), ("SIP domain", sip_domain)):
                reason = _host_problem(value) if isinstance(value, str) else "not a string"
                if reason:
                    out.append((("domains", im_domain), f"sip_mapping.domains: {what} {value!r}: {reason}"))
    if "template" in rule:
        problem = template_problem(rule["template"], next(iter((domains or {}).values()), "contoso.com")
                                   if isinstance(domains, Mapping) else "contoso.com")
        if problem:
            out.append((("template",), problem))
    return out


def template_problem(template: Any, sample_domain: str = "contoso.com") -> str | None:
    """Why ``template`` cannot be a sip_mapping template, or None (see :func:`rule_problems`)."""
    if not isinstance(template, str):
        return f"sip_mapping.template must be a string such as {DEFAULT_TEMPLATE!r}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"sip_mapping.template {template!r} is not a valid template: {exc}"
    used = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS:
            hint = f" (did you mean {{{_closest(name)}}}?)" if _closest(name) else ""
            return (f"sip_mapping.template {template!r}: unknown field {{{name}}}{hint}; "
                    f"known: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
        if spec or conversion:
            return f"sip_mapping.template {template!r}: {{{name}}} takes no format or conversion"
        used.add(name)
    if not used & {"local", "address"}:
        return (f"sip_mapping.template {template!r} uses neither {{local}} nor {{address}}: "
                "every contact would get the same SIP URI")
    sample = template.format(local="alice", domain=str(sample_domain), im_domain="im.contoso.com",
                             address="alice@im.contoso.com")
    reason = validate_sip_uri(sample)
    if reason:
        return f"sip_mapping.template {template!r} does not give a valid SIP URI ({reason})"
    return None


def _closest(name: str) -> str | None:
    import difflib
    found = difflib.get_close_matches(name.split(".")[0].split("[")[0], TEMPLATE_FIELDS, n=1, cutoff=0.6)
    return found[0] if found else None


def validate_sip_uri(uri: str) -> str | None:
    """Why ``uri`` is not an acceptable LCS SIP URI, or None when it is.

    Accepts ``sip:user@host`` where host is an FQDN or an IP address literal
    that is neither unspecified (0.0.0.0, ::) nor multicast; at most 454
    characters (the SIPURI limit of MSFT_SIPESUserContactData).
    """
    if not isinstance(uri, str) or not uri:
        return "empty SIP URI"
    if len(uri) > MAX_SIP_URI:
        return f"SIP URI longer than {MAX_SIP_URI} characters"
    if not uri.lower().startswith("sip:"):
        return f"{uri!r} does not start with 'sip:'"
    rest = uri[4:]
    if rest.count("@") != 1:
        return f"{uri!r} is not of the form sip:user@domain"
    user, host = rest.split("@")
    if not user or not _USER_RE.match(user):
        return f"{uri!r} has an invalid user part"
    reason = _host_problem(host)
    if reason:
        return f"{uri!r}: {reason}"
    return None


@functools.lru_cache(maxsize=256)
def _host_problem(host: str) -> str | None:
    # (cached: an estate's thousands of users share a few SIP domains)
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(literal)
    except ValueError:
        ip = None
    if ip is not None:
        if ip.is_unspecified:
            return f"host {host} is the unspecified address"
        if ip.is_multicast:
            return f"host {host} is a multicast address"
        return None
    if re.fullmatch(r"[0-9.]+", host):
        return f"host {host} is not a valid IP address"
    labels = host.rstrip(".").split(".")
    if len(labels) < 2 or len(host) > 253:
        return f"host {host!r} is not a fully qualified domain name"
    if not all(_LABEL_RE.match(lb) for lb in labels):
        return f"host {host!r} is not a valid domain name"
    return None


@dataclass(frozen=True)
class SipMapping:
    """One effective mapping rule (inventory's, possibly with a user's overrides)."""

    table: Mapping[str, str] = field(default_factory=dict)
    domains: Mapping[str, str] = field(default_factory=dict)
    template: str = DEFAULT_TEMPLATE
    #: im_address (lowercase) -> explicit sip_uri of inventory users.
    users: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_vars(cls, rule: Mapping[str, Any] | None,
                  override: Mapping[str, Any] | None = None,
                  users: Mapping[str, str] | None = None) -> "SipMapping":
        """Build from a ``sip_mapping`` variable, with ``override`` merged over it."""
        rule = dict(rule or {})
        override = dict(override or {})
        table = {str(k).lower(): str(v) for k, v in (rule.get("table") or {}).items()}
        table.update({str(k).lower(): str(v) for k, v in (override.get("table") or {}).items()})
        domains = {str(k).lower(): str(v) for k, v in (rule.get("domains") or {}).items()}
        domains.update({str(k).lower(): str(v) for k, v in (override.get("domains") or {}).items()})
        template = str(override.get("template") or rule.get("template") or DEFAULT_TEMPLATE)
        # the inventory's table is shared read-only by every user's mapping (copying it for each
        # of 20,000 users was quadratic); any other is copied
        shared = users if isinstance(users, MappingProxyType) else MappingProxyType(dict(users or {}))
        return cls(table=table, domains=domains, template=template, users=shared)

    def map(self, address: str) -> MapResult:
        """Map one Exchange IM address; see the module docstring for the order."""
        address = (address or "").strip()
        m = _ADDRESS_RE.match(address)
        if not m:
            return Unmappable(address, "not an IM address of the form user@domain")
        key = address.lower()
        if key in self.table:
            return _checked(address, self.table[key], "table")
        if key in self.users:
            return _checked(address, self.users[key], "user")
        local, domain = m.group(1), m.group(2).lower()
        if domain not in self.domains:
            return Unmappable(address, f"domain {domain} is not in the sip_mapping domains")
        try:
            uri = self.template.format(local=local, domain=self.domains[domain],
                                       im_domain=domain, address=address)
        except (KeyError, IndexError, ValueError) as exc:
            return Unmappable(address, f"sip_mapping template {self.template!r} is invalid: {exc}")
        return _checked(address, uri, "domain")


def _checked(address: str, uri: str, rule: str) -> MapResult:
    reason = validate_sip_uri(uri)
    if reason:
        return Unmappable(address, reason)
    return Mapped(address, uri, rule)


def mapping_for(vars: Mapping[str, Any], inventory: Inventory | None = None,
                user: User | None = None) -> SipMapping:
    """The effective mapping for ``user``'s contacts: the ``sip_mapping`` variable
    (from ``vars``, else the inventory's), the user's ``vars.sip_mapping`` over
    it, and every inventory user's explicit ``sip_uri``."""
    rule = vars.get("sip_mapping")
    override = (user.vars or {}).get("sip_mapping") if user is not None else None
    if (rule is None or (override is not None and rule == override)) and inventory is not None:
        # task variables already hold the user's override in place of the rule
        rule = inventory.vars.get("sip_mapping")
    users = inventory.sip_uris_by_address() if inventory is not None else {}
    return SipMapping.from_vars(rule if isinstance(rule, Mapping) else None,
                                override if isinstance(override, Mapping) else None, users)


def user_sip_uri(user: User, vars: Mapping[str, Any], inventory: Inventory | None = None) -> MapResult:
    """The SIP URI ``user`` is enabled with: ``user.sip_uri`` when set, else the rule."""
    if user.sip_uri:
        return _checked(user.im_address, user.sip_uri, "override")
    return mapping_for(vars, inventory, user).map(user.im_address)
