"""upgrade_messenger: install Windows Messenger 5.1 where the installed version is older.

Probe reads the version from the Uninstall keys (and msmsgs.exe's file
version through wmic as a fallback) in one round trip. Apply runs
``msiexec /i PACKAGE /qn /norestart /l*v LOG``: 0 changed; 3010/1641
changed with ``reboot_required``; 1618 TransientFault (the engine retries);
anything else failed, with the installer log fetched into an artifact.
"""
from __future__ import annotations

from typing import Any

from runner.errors import TransientFault
from runner.model import Host
from runner.steps import _clients as cl
from runner.steps.base import Diff, StepContext, StepModule, StepResult
from runner.windows import msiexec, reg

DEFAULT_PACKAGE = r"\\deploy\packages\WindowsMessenger51.msi"
TARGET_VERSION = "5.1"


def installed_version(ctx: StepContext, host: str) -> str | None:
    """The installed Messenger version on ``host`` (None when not installed)."""
    exe = str(ctx.args.get("messenger_exe") or cl.DEFAULT_MESSENGER_EXE)
    sections, _ = cl.run_sections(ctx.connection(host), [reg.query(cl.UNINSTALL, recursive=True),
                                                         cl.file_version_query(exe)])
    text = [s.stdout if s is not None and s.ok else "" for s in sections]
    found = cl.messenger_from_uninstall(reg.parse_query(text[0]))
    if found and found.get("version"):
        return found["version"]
    return cl.file_version(text[1])


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
        wanted = str(ctx.args.get("version") or TARGET_VERSION)
        current = installed_version(ctx, target.name)
        if current and cl.version_tuple(current) >= cl.version_tuple(wanted):
            return None
        package = self._package(ctx)
        return Diff(summary=f"install Windows Messenger {wanted} (installed: {current or 'none'})",
                    lines=[f"- messenger {current or '(none)'}", f"+ messenger {wanted} from {package}"],
                    data={"from": current, "package": package})

    def apply(self, ctx: StepContext, target: Host, diff: Diff) -> StepResult:  # type: ignore[override]
        conn = ctx.connection(target.name)
        log = str(ctx.args.get("log") or msiexec.DEFAULT_LOG)
        cmd = msiexec.install(diff.data["package"], log=log)
        result = conn.run(cmd.render())
        outcome = msiexec.classify(result.rc)
        data: dict[str, Any] = {"rc": result.rc, "from": diff.data.get("from"), "package": diff.data["package"],
                                "reboot_required": outcome.reboot_required}
        if outcome.outcome is msiexec.MsiOutcome.TRANSIENT:
            raise TransientFault(f"msiexec {result.rc}: {outcome.message}", host=target.name, data=data)
        if outcome.succeeded:
            msg = f"installed {diff.data['package']}" + (" (reboot required)" if outcome.reboot_required else "")
            return StepResult("changed", msg, data=data,
                              warnings=[f"{target.name}: reboot required"] if outcome.reboot_required else [])
        try:
            log_bytes = conn.get(log)
        except Exception as exc:  # the log may be missing (1619: package not found)
            data["log_error"] = f"{type(exc).__name__}: {exc}"
        else:
            ref = ctx.artifacts.write(f"msiexec/{target.name}/runner-wm51.log", log_bytes)
            data["log_artifact"] = {"path": ref.path, "sha256": ref.sha256, "size": ref.size}
        return StepResult("failed", f"msiexec {result.rc}: {outcome.message}", data=data)
