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

Where the package comes from. ``messenger_package`` (default
``\\\\deploy\\packages\\WindowsMessenger51.msi``) is read by msiexec on the client,
which needs a session with network credentials: a password logon. A key-based
SSH logon on Windows has none and gets "Access is denied" for every share
(docs/transports.md). For those hosts set ``messenger_package_local``, a file on
the control node (the inventory loader resolves it against the inventory's
folder and checks it exists): apply then pushes it over the connection into the
host's scratch folder (runner.hostenv: ``remote_temp``, else ``%SystemRoot%\\Temp``)
as ``runner-wm51-<12 hex of its sha256>.msi``, has the client compute the pushed
file's SHA-256 (``client_sha256_tool``, runner.windows.sha256), runs msiexec only
when it is the control node's, and deletes it afterwards, also when the install
or the check failed. A hash that differs (a transfer cut short) is a
TransientFault: the engine pushes again. With ``client_sha256_tool: sftp`` the
file is read back over SFTP and hashed on the control node instead: that proves
the bytes on the client's disk as its SSH server reads them, not what a program
of the client reads, and costs a second transfer. A run killed between the push
and the delete leaves the file: the next live probe of that host and the delete
after the next install remove every ``runner-wm51-*.msi`` in that folder. (A
probe from this run's facts makes no round trip and so deletes nothing; it
stands only while the host has no upgrade outcome, and then the host is
upgraded: its install line deletes them.)
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from runner import hostenv
from runner.errors import PermanentFault, StepFault, TransientFault
from runner.model import Host
from runner.steps import _clients as cl
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import msiexec, reg, sha256
from runner.windows.cmdline import Command, Quoted, branch_sections, sectioned

DEFAULT_PACKAGE = r"\\deploy\packages\WindowsMessenger51.msi"
TARGET_VERSION = "5.1"
PUSHED_PREFIX = "runner-wm51-"
#: The scratch folder when ``remote_temp`` is not set, as cmd.exe expands it on the host.
SYSTEM_TEMP = r"%SystemRoot%\Temp"


def installed(ctx: StepContext, host: str) -> tuple[str | None, str | None, bool]:
    """(newest registered Messenger product's version, msmsgs.exe's file version, whether the
    file could be looked at) on ``host``; None where there is none. One round trip, or none
    when ``_fresh_facts`` stand for it. A live read of a host the package is pushed to also
    deletes pushed packages a killed run left; facts stand only for a host without an
    upgrade outcome, whose leftovers (if any) its install line deletes."""
    exe = str(ctx.args.get("messenger_exe") or cl.DEFAULT_MESSENGER_EXE)
    pushing = pushes(ctx)
    facts = _fresh_facts(ctx, host, exe)
    if facts is not None:
        m = facts["messenger"]
        return (m.get("version") if m.get("source") == "uninstall" else None), m.get("file_version"), \
            bool(m["file_known"])
    reads = [reg.query(cl.UNINSTALL, recursive=True)]
    wmic = cl.has_wmic(ctx, host)
    if wmic:
        reads.append(cl.file_version_query(exe))
    if pushing and not ctx.check:   # --check changes nothing, not even a leftover
        reads.append(_leftovers_removal(_push_folder(ctx)))
    sections, _ = cl.run_sections(ctx.connection(host), reads, limit=cl.line_limit(ctx, host),
                                  owner=cl.script_owner(ctx, f"host:{host}"))
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    found = cl.messenger_from_uninstall(reg.parse_query(text[0]))
    file_known = wmic and sections[1] is not None and sections[1].ok
    return (found or {}).get("version"), cl.file_version(text[1]) if wmic else None, file_known


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


def pushes(ctx: StepContext) -> bool:
    """Whether the package is pushed from the control node (``messenger_package_local``,
    unless the step's own ``package`` argument names the host's path)."""
    return bool(ctx.vars.get("messenger_package_local")) and not ctx.args.get("package")


def _push_folder(ctx: StepContext) -> str | None:
    """``remote_temp`` when set (a literal path), else None: the host's ``%SystemRoot%\\Temp``."""
    value = ctx.vars.get("remote_temp")
    if not value:
        return None
    folder = str(value).rstrip("\\")
    if "%" in folder or not re.match(r"^[A-Za-z]:\\", folder + "\\"):
        raise PermanentFault(f"remote_temp {folder!r} must be a literal folder such as C:\\WINNT\\Temp: the "
                             "package is copied there over SFTP, which expands no %VARIABLE%; leave it unset "
                             "for the host's %SystemRoot%\\Temp")
    return folder


def _leftovers_removal(folder: str | None) -> Command:
    """``del /q`` of every pushed package in ``folder`` (None: ``%SystemRoot%\\Temp``, which cmd.exe
    expands), a killed run's leftovers included (``2>nul``: none is no error)."""
    pattern = (Quoted(folder + "\\" + PUSHED_PREFIX + "*.msi") if folder is not None
               else f'"{SYSTEM_TEMP}\\{PUSHED_PREFIX}*.msi"')   # a constant: %SystemRoot% expands
    return Command("del", "/q", pattern, "2>nul")


def local_package(path: str) -> tuple[bytes, str]:
    """The bytes of the control node's package file and their sha256 (PermanentFault when it
    cannot be read: the loader checked it exists, but it may have gone since)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PermanentFault(f"messenger_package_local {path}: cannot read it ({exc.strerror or exc})") from None
    return data, hashlib.sha256(data).hexdigest()


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
        """What msiexec installs from: the control node's file to push, else the host's path."""
        if pushes(ctx):
            return str(ctx.vars["messenger_package_local"])
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
        pushed = pushes(ctx)
        lines = [f"- messenger {current or '(none)'}",
                 f"+ messenger {want} from {package}" + (" (pushed to the client, its SHA-256 checked)"
                                                         if pushed else "")]
        data: dict[str, Any] = {"from": current, "package": package}
        if pushed:
            data["push"] = True
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
        if not diff.data.get("push"):
            conn = ctx.connection(target.name)
            line, log = self._install_line(ctx, target, diff, diff.data["package"])
            result = conn.run(line.render(limit=cl.line_limit(ctx, target.name)))
            return self._outcome(ctx, target, diff, result.rc, log, diff.data["package"], {})
        conn = ctx.connection(target.name)
        limit = cl.line_limit(ctx, target.name)
        try:
            tool = sha256.check_tool(ctx.vars.get("client_sha256_tool"))
        except ValueError as exc:
            raise PermanentFault(f"{target.name}: {exc}", host=target.name) from None
        payload, digest = local_package(diff.data["package"])
        given = _push_folder(ctx)   # checked: a literal folder, since SFTP expands nothing
        facts = ctx.facts(target.name) if hasattr(ctx, "facts") else None
        folder = given or hostenv.temp_dir(conn, ctx.vars, facts)
        remote = f"{folder}\\{PUSHED_PREFIX}{digest[:12]}.msi"
        pushed = {"local": diff.data["package"], "remote": remote, "sha256": digest, "size": len(payload),
                  "hash_tool": tool}
        state = {"cleaned": False}   # whether the folded line's delete ran
        try:
            conn.put(payload, remote)
            if tool == "sftp":
                self._check_read_back(target, conn, pushed)
            rc, log = self._push_line(ctx, target, diff, tool, pushed, folder, limit, state)
            return self._outcome(ctx, target, diff, rc, log, remote, {"pushed": pushed})
        finally:
            if not state["cleaned"]:   # the line never ran its delete (a put, a read-back or the line failed)
                try:   # this push and any a killed run left
                    conn.run(_leftovers_removal(folder).render(limit=limit))
                except StepFault:
                    pass   # the host's next probe or install deletes it

    def _push_line(self, ctx: StepContext, target: Host, diff: Diff, tool: str, pushed: dict[str, Any],
                   folder: str, limit: int, state: dict[str, bool]) -> tuple[int, str]:
        """After the put, one line does the rest: with a hash tool on the client, ``HASH | findstr
        DIGEST && (msiexec ..., its exit code echoed) || (HASH again, to tell a damaged copy from a
        missing tool)``; with ``sftp`` (read back already) msiexec alone; then, whatever happened,
        the delete of every pushed package in ``folder``. Returns (msiexec's exit code, its log)
        and sets ``state["cleaned"]`` when the delete ran; a hash that differs is a TransientFault (pushed again), none
        at all a PermanentFault."""
        remote = pushed["remote"]
        install, log = self._install_line(ctx, target, diff, remote)
        # %^ERRORLEVEL% survives the line's expansion; call expands it after msiexec ran. No other
        # % may follow it on the line (cmd.exe would pair its closing % with that one): the copy's
        # path and the folder are literal (hostenv's and _push_folder's paths hold no %)
        with_code = Command(install, "&", "call", "echo", "%^ERRORLEVEL%")
        removal = _leftovers_removal(folder)
        if "%" in remote or "%" in removal.render():
            raise PermanentFault(f"{target.name}: the push folder {folder!r} holds a %: set remote_temp "
                                 "to a literal folder", host=target.name)
        gated = tool != "sftp"

        def build(nonce: str, start: int) -> tuple[list[Command], int]:
            if gated:
                first, _ = branch_sections(sha256.gate(tool, remote, pushed["sha256"]), [with_code],
                                           [sha256.command(tool, remote)], nonce, start=start)
                parts = [first]
            else:
                parts, _ = sectioned([with_code], nonce, start=start)
            n = 3 if gated else 1
            tail, _ = sectioned([removal], nonce, start=start + n)
            return [Command(*parts, "&", *tail)], n + 1

        sections, stderr = cl.run_built(ctx.connection(target.name), [build], limit=limit,
                                        owner=cl.script_owner(ctx, f"host:{target.name}"))
        state["cleaned"] = sections[-1] is not None
        if gated:
            check, installed_sec, answer = sections[0], sections[1], sections[2]
            if check is None:
                raise TransientFault(f"{target.name}: no answer from the line that checks and installs the "
                                     f"pushed package ({stderr.strip()[:200] or 'no output'})", host=target.name,
                                     data={"pushed": pushed})
            if not check.ok:
                self._mismatch(target, tool, pushed, answer, stderr)
            line = next((ln.strip() for ln in check.stdout.splitlines() if ln.strip()), "")
            if tool == "auto":   # which of the two answered, for the result
                pushed["hash_tool"] = sha256.answered_by(line)
        else:
            installed_sec = sections[0]
        code = _exit_code(installed_sec)
        if code is None:
            raise TransientFault(f"{target.name}: msiexec's exit code did not come back "
                                 f"({stderr.strip()[:200] or 'no output'})", host=target.name,
                                 data={"pushed": pushed})
        return code, log

    def _mismatch(self, target: Host, tool: str, pushed: dict[str, Any], answer: Any, stderr: str) -> None:
        """The gate failed, msiexec did not run: a hash that differs (TransientFault: pushed again)
        or none at all (PermanentFault: no tool); the gate's own findstr failing on a matching
        hash is a PermanentFault too (the host's findstr is not what the runner needs)."""
        remote = pushed["remote"]
        got = sha256.parse(answer.stdout) if answer is not None and answer.ok else None
        if got is None:
            text = ((answer.stdout if answer is not None else "") + stderr).strip()
            raise PermanentFault(
                f"{target.name}: could not compute the pushed package's SHA-256 on the client with "
                f"{tool} ({text[:200] or 'no output'}); see client_sha256_tool in docs/transports.md",
                host=target.name, data={"pushed": pushed})
        if got == pushed["sha256"]:
            raise PermanentFault(
                f"{target.name}: the pushed package's SHA-256 is right but findstr on the client did not "
                f"confirm it ({stderr.strip()[:200] or 'no output'}); msiexec was not run", host=target.name,
                data={"pushed": pushed})
        raise TransientFault(
            f"{target.name}: the pushed package {remote} has SHA-256 {got[:16]}..., not the control "
            f"node's {pushed['sha256'][:16]}... ({pushed['size']} bytes sent): the transfer was "
            "damaged; msiexec was not run; pushing it again", host=target.name,
            data={"pushed": dict(pushed, got=got)})

    def _check_read_back(self, target: Host, conn: Any, pushed: dict[str, Any]) -> None:
        """``client_sha256_tool: sftp``: the pushed file read back over the connection has the
        control node's SHA-256, else a TransientFault (pushed again)."""
        got = hashlib.sha256(conn.get(pushed["remote"])).hexdigest()
        if got != pushed["sha256"]:
            raise TransientFault(
                f"{target.name}: the pushed package {pushed['remote']} has SHA-256 {got[:16]}..., not the "
                f"control node's {pushed['sha256'][:16]}... ({pushed['size']} bytes sent): the transfer was "
                "damaged; pushing it again", host=target.name, data={"pushed": dict(pushed, got=got)})

    def _install_line(self, ctx: StepContext, target: Host, diff: Diff, package: str) -> tuple[Command, str]:
        """``mkdir LOGDIR & msiexec /i package ...`` (runner.windows.msiexec) and its log's path."""
        conn = ctx.connection(target.name)
        facts = ctx.facts(target.name) if hasattr(ctx, "facts") else None
        log = str(ctx.args.get("log") or hostenv.temp_dir(conn, ctx.vars, facts) + "\\" + msiexec.LOG_NAME)
        props = {"REINSTALL": "ALL", "REINSTALLMODE": "vomus"} if diff.data.get("reinstall") else {}
        return msiexec.install_line(package, log=log, properties=props), log

    def _outcome(self, ctx: StepContext, target: Host, diff: Diff, rc: int, log: str, package: str,
                 extra: dict[str, Any]) -> StepResult:
        """What msiexec's exit code ``rc`` means (runner.windows.msiexec), its log fetched on failure."""
        conn = ctx.connection(target.name)
        outcome = msiexec.classify(rc)
        data: dict[str, Any] = {"rc": rc, "from": diff.data.get("from"), "package": diff.data["package"],
                                "reboot_required": outcome.reboot_required,
                                "to": str(ctx.args.get("version") or TARGET_VERSION), **extra}
        if diff.data.get("partial"):
            data["partial"] = diff.data["partial"]
        if outcome.outcome is msiexec.MsiOutcome.TRANSIENT:
            raise TransientFault(f"msiexec {rc}: {outcome.message}", host=target.name, data=data)
        if outcome.succeeded:
            # what the host's facts (inventory_clients) say from now on: runner status shows it
            want = str(ctx.args.get("version") or TARGET_VERSION)
            data["facts_update"] = {"messenger": {"installed": True, "product": f"Windows Messenger {want}",
                                                  "version": want,
                                                  "product_code": None},
                                    "reboot_pending": outcome.reboot_required}
            msg = f"installed {diff.data['package']}"
            if "pushed" in extra:
                tool = extra["pushed"]["hash_tool"]
                msg += (" (pushed, read back and its SHA-256 checked)" if tool == "sftp"
                        else f" (pushed, SHA-256 checked on the client with {tool})")
            msg += " (reboot required)" if outcome.reboot_required else ""
            return StepResult("changed", msg, data=data,
                              warnings=[f"{target.name}: reboot required"] if outcome.reboot_required else [])
        if rc == 1622:  # msiexec could not open its log: there is none to fetch
            return StepResult("failed", f"msiexec 1622: {outcome.message} (log {log})", data=data)
        try:
            log_bytes = conn.get(log)
        except Exception as exc:  # the log may be missing (1619: package not found)
            data["log_error"] = f"{type(exc).__name__}: {exc}"
        else:
            ref = ctx.artifacts.write(f"msiexec/{target.name}/runner-wm51.log", log_bytes)
            data["log_artifact"] = {"path": ref.path, "sha256": ref.sha256, "size": ref.size}
        hint = ""
        if rc == 1619 and package.startswith("\\\\"):
            hint = (" (the package is on a share, which a key-based SSH logon cannot read: log on with "
                    "a password, or set messenger_package_local to push the package; docs/transports.md)")
        return StepResult("failed", f"msiexec {rc}: {outcome.message}{hint}", data=data)


def _exit_code(section: Any) -> int | None:
    """The exit code ``call echo %^ERRORLEVEL%`` printed as the last line of ``section``."""
    if section is None:
        return None
    lines = [ln.strip() for ln in section.stdout.splitlines() if ln.strip()]
    if not lines or not re.fullmatch(r"-?\d+", lines[-1]):
        return None
    return int(lines[-1])
