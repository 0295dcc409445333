"""upgrade_messenger: install Windows Messenger 5.1 where the installed version is older.

Probe reads the registered products (the Uninstall keys, whose ``DisplayVersion``
every Windows version has) and msmsgs.exe's file version (wmic datafile; not on
Windows 2000, which has no wmic: its facts say so, and there the Uninstall key
alone tells) in one round trip. The upgrade is done only when
both say so: a Messenger product of the wanted version is registered *and*
the file is of that version. A 5.1 file without its product (an install cut
short, a file copied by hand) is installed again; a registered product whose
file is older is reinstalled (``REINSTALL=ALL REINSTALLMODE=vomus``). Apply runs
``mkdir LOGDIR & msiexec /i PACKAGE /qn /norestart /l*v LOG`` (LOG in the host's
``%SystemRoot%\\Temp`` unless ``log`` says otherwise, its folder made first: msiexec
exits 1622 without it): 0 changed; 3010/1641 changed with ``reboot_required``; 1618
TransientFault (the engine retries); anything else failed, with the installer log
fetched into an artifact (1622 names the log path: no log was written).
"""
from __future__ import annotations

from typing import Any

from runner import hostenv
from runner.errors import TransientFault
from runner.model import Host
from runner.steps import _clients as cl
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import msiexec, reg

DEFAULT_PACKAGE = r"\\deploy\packages\WindowsMessenger51.msi"
TARGET_VERSION = "5.1"


def installed(ctx: StepContext, host: str) -> tuple[str | None, str | None, bool]:
    """(newest registered Messenger product's version, msmsgs.exe's file version, whether the
    file could be looked at) on ``host``; None where there is none. One round trip, or none
    when ``_fresh_facts`` stand for it."""
    exe = str(ctx.args.get("messenger_exe") or cl.DEFAULT_MESSENGER_EXE)
    facts = _fresh_facts(ctx, host, exe)
    if facts is not None:
        m = facts["messenger"]
        return (m.get("version") if m.get("source") == "uninstall" else None), m.get("file_version"), \
            bool(m["file_known"])
    reads = [reg.query(cl.UNINSTALL, recursive=True)]
    if cl.has_wmic(ctx, host):
        reads.append(cl.file_version_query(exe))
    sections, _ = cl.run_sections(ctx.connection(host), reads, limit=cl.line_limit(ctx, host))
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    found = cl.messenger_from_uninstall(reg.parse_query(text[0]))
    file_known = len(sections) > 1 and sections[1] is not None and sections[1].ok
    return (found or {}).get("version"), cl.file_version(text[1]) if len(text) > 1 else None, file_known


def _fresh_facts(ctx: StepContext, host: str, exe: str) -> Any:
    """The facts inventory_clients gathered on ``host`` in this run (same ``messenger_exe``),
    when nothing can have changed Messenger since: no upgrade_messenger outcome of the host
    exists in any run. Then they stand for the probe's read (one round trip less per host);
    otherwise (a later wave, a retry after an install, an earlier run) the probe reads live.
    A kill after msiexec but before its checkpoint leaves no outcome: the resumed run
    installs again, which an apply must bear anyway (runner.steps.base)."""
    facts = ctx.facts(host) if hasattr(ctx, "facts") else None
    if not facts or facts.get("run_id") != ctx.run_id or facts.get("messenger_exe") != exe:
        return None
    if not isinstance(facts.get("messenger"), dict) or "file_known" not in facts["messenger"]:
        return None
    if ctx.previous(UpgradeMessenger.name, host):
        return None
    return facts


class UpgradeMessenger(StepModule):
    """Bring Windows Messenger to 5.1 or later."""

    name = "upgrade_messenger"
    target = "host"
    args_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "package": {"type": "string", "minLength": 1},
            "version": {"type": "string", "pattern": r"^\d+(\.\d+)*$"},
            "log": {"type": "string", "minLength": 1},
            "messenger_exe": {"type": "string", "minLength": 1},
        },
    }

    def _package(self, ctx: StepContext) -> str:
        return str(ctx.args.get("package") or ctx.vars.get("messenger_package") or DEFAULT_PACKAGE)

    def probe(self, ctx: StepContext, target: Host) -> Diff | None:  # type: ignore[override]
        wanted = cl.version_tuple(str(ctx.args.get("version") or TARGET_VERSION))
        product, file, file_known = installed(ctx, target.name)
        registered = bool(product) and cl.version_tuple(product) >= wanted
        # a file that could not be looked at (no wmic) does not hold up a registered product
        on_disk = bool(file) and cl.version_tuple(file) >= wanted or (registered and not file_known)
        if registered and on_disk:
            self._found = (target.name, product or file)  # what unchanged() records
            return None
        package = self._package(ctx)
        want = str(ctx.args.get("version") or TARGET_VERSION)
        current = product or file
        lines = [f"- messenger {current or '(none)'}", f"+ messenger {want} from {package}"]
        data: dict[str, Any] = {"from": current, "package": package}
        if on_disk and file:  # the file is there, its product is not: an install cut short
            lines.append(f"! msmsgs.exe is {file} but no Messenger {want} product is registered: installing again")
            data["partial"] = f"file {file} without its product"
        elif registered:  # registered, but the file is older or missing: repair
            lines.append(f"! Messenger {product} is registered but msmsgs.exe is {file or 'missing'}: reinstalling")
            data["partial"] = f"product {product} with file {file or 'missing'}"
            data["reinstall"] = True
        return Diff(summary=f"install Windows Messenger {want} (installed: {current or 'none'}"
                            + (f"; partial: {data['partial']})" if "partial" in data else ")"),
                    lines=lines, data=data)

    def unchanged(self, ctx: StepContext, target: Host) -> StepResult:  # type: ignore[override]
        """Already up to date: ok, with the version found (``runner report`` shows it)."""
        found, self._found = getattr(self, "_found", None), None
        if found is None or found[0] != target.name:
            return StepResult("ok")
        return StepResult("ok", data={"version": found[1]})

    def apply(self, ctx: StepContext, target: Host, diff: Diff) -> StepResult:  # type: ignore[override]
        conn = ctx.connection(target.name)
        facts = ctx.facts(target.name) if hasattr(ctx, "facts") else None
        log = str(ctx.args.get("log") or hostenv.temp_dir(conn, ctx.vars, facts) + "\\" + msiexec.LOG_NAME)
        props = {"REINSTALL": "ALL", "REINSTALLMODE": "vomus"} if diff.data.get("reinstall") else {}
        cmd = msiexec.install_line(diff.data["package"], log=log, properties=props)
        result = conn.run(cmd.render(limit=cl.line_limit(ctx, target.name)))
        outcome = msiexec.classify(result.rc)
        data: dict[str, Any] = {"rc": result.rc, "from": diff.data.get("from"), "package": diff.data["package"],
                                "reboot_required": outcome.reboot_required,
                                "to": str(ctx.args.get("version") or TARGET_VERSION)}
        if diff.data.get("partial"):
            data["partial"] = diff.data["partial"]
        if outcome.outcome is msiexec.MsiOutcome.TRANSIENT:
            raise TransientFault(f"msiexec {result.rc}: {outcome.message}", host=target.name, data=data)
        if outcome.succeeded:
            # what the host's facts (inventory_clients) say from now on: runner status shows it
            want = str(ctx.args.get("version") or TARGET_VERSION)
            data["facts_update"] = {"messenger": {"installed": True, "product": f"Windows Messenger {want}",
                                                  "version": want,
                                                  "product_code": None},
                                    "reboot_pending": outcome.reboot_required}
            msg = f"installed {diff.data['package']}" + (" (reboot required)" if outcome.reboot_required else "")
            return StepResult("changed", msg, data=data,
                              warnings=[f"{target.name}: reboot required"] if outcome.reboot_required else [])
        if result.rc == 1622:  # msiexec could not open its log: there is none to fetch
            return StepResult("failed", f"msiexec 1622: {outcome.message} (log {log})", data=data)
        try:
            log_bytes = conn.get(log)
        except Exception as exc:  # the log may be missing (1619: package not found)
            data["log_error"] = f"{type(exc).__name__}: {exc}"
        else:
            ref = ctx.artifacts.write(f"msiexec/{target.name}/runner-wm51.log", log_bytes)
            data["log_artifact"] = {"path": ref.path, "sha256": ref.sha256, "size": ref.size}
        return StepResult("failed", f"msiexec {result.rc}: {outcome.message}", data=data)
