"""The ``runner`` command line: argument parsing only, and exit codes in one place.

Every error type maps to its exit code here (runner/errors.py): user errors
print a message, never a traceback; click usage errors exit 5 (bad options);
anything unexpected exits 250 with a short message and the path of the
traceback file.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import click

from runner import __version__

from runner.errors import (EXIT_BAD_OPTIONS, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK,
                           EXIT_UNEXPECTED, InputError, InputErrors, RunnerError)

DEFAULT_INVENTORY = "inventories/lab.yml"
DEFAULT_STATE = ".runner"
STATE_DIR = click.Path(file_okay=False)  # --state naming a file is a bad option (exit 5), not a crash
_ARGV: list[str] = []  # the arguments of the current invocation (for the resume command)


def _split_tags(values: tuple[str, ...], option: str = "--tags") -> set[str]:
    tags = {t.strip() for v in values for t in v.split(",") if t.strip()}
    if values and not tags:  # `--tags "$TAGS"` with TAGS unset must not mean every step
        raise click.BadParameter(f"{' '.join(map(repr, values))} names no tag", param_hint=option)
    return tags


def resume_command(argv: list[str]) -> str:
    """The command that resumes this run: the same arguments without ``--fresh``."""
    return shlex.join(["runner", *[a for a in argv if a != "--fresh"]])


def _complete_files(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion of a file name (the shell lists the files: bash, zsh and fish)."""
    from click.shell_completion import CompletionItem
    return [CompletionItem(incomplete, type="file")]


def _default_inventory(inventory: str | None) -> str:
    if inventory:
        return inventory
    if not Path(DEFAULT_INVENTORY).exists():
        raise RunnerError(f"no inventory given and {DEFAULT_INVENTORY} does not exist in {os.getcwd()}; "
                          f"pass -i INVENTORY")
    return DEFAULT_INVENTORY


class _Commands(click.Group):
    """The top-level group; ``lab`` and ``inventory`` are imported when first named (or listed
    by ``--help`` and completion): the lab's generator and CLI were 80 of the 150 ms every
    ``runner`` command spent importing, an all-skipped resume included."""

    LAZY = {"lab": ("runner.lab.cli", "lab"), "inventory": ("runner.inventory.cli", "inventory")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is not None or cmd_name not in self.LAZY:
            return found
        module, attr = self.LAZY[cmd_name]
        try:
            command = getattr(__import__(module, fromlist=[attr]), attr)
        except ImportError:
            return None
        self.add_command(command)
        return command


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="runner", message="%(prog)s %(version)s")
def cli() -> None:
    """Migrate Exchange 2000 Instant Messaging to Live Communications Server 2005, declaratively.

    Exit codes: 0 ok, 1 error, 2 tasks failed, 3 hosts unreachable, 4 invalid
    playbook/inventory, 5 bad options, 99 interrupted (resumable), 250 unexpected.

    Environment: RUNNER_RETRY_DELAY_SCALE multiplies every retry delay and
    backoff (e.g. 0.01 for a fault-injected lab rehearsal; unset in production).
    """


@cli.command()
@click.argument("playbook", shell_complete=_complete_files)
@click.option("-i", "--inventory", shell_complete=_complete_files,
              help=f"Inventory file (default: {DEFAULT_INVENTORY}).")
@click.option("--check", is_flag=True, help="Probe only: report what would change, change nothing.")
@click.option("--diff", is_flag=True, help="Show what each task changes (or would change with --check).")
@click.option("--limit", "-l", help="Only these hosts, groups, users or waves (wave:NAME), comma separated; "
                                    "@FILE: one a line.")
@click.option("--tags", "-t", multiple=True, help="Only steps with these tags (comma separated).")
@click.option("--skip-tags", multiple=True, help="Skip steps with these tags.")
@click.option("--start-at-step", help="Start at the step with this name.")
@click.option("--forks", "-f", type=click.IntRange(min=1), default=25, show_default=True,
              help="How many tasks run at once.")
@click.option("--state", "state_dir", default=DEFAULT_STATE, show_default=True, type=STATE_DIR,
              help="Directory of the checkpoint store.")
@click.option("--fresh", is_flag=True, help="Start a new run instead of resuming the last one.")
@click.option("--json", "as_json", is_flag=True, help="Write JSON-lines events on stdout instead of text.")
@click.option("-v", "--verbose", count=True, help="More output: -v per-task lines, -vvv tracebacks.")
@click.option("-q", "--quiet", is_flag=True,
              help="Only the failures, the recap totals and the command to resume.")
@click.option("--accept-new-host-keys", is_flag=True,
              help="Trust SSH host keys seen for the first time (and add them to known_hosts).")
@click.option("-e", "--extra-vars", "extra_vars", multiple=True, metavar="VARS",
              help="Variables above all others: key=value (several, space separated), a JSON object, "
                   "or @FILE.yml.")
@click.option("--list-hosts", is_flag=True, help="List the hosts and users per play and wave, run nothing.")
@click.option("--list-tasks", is_flag=True, help="List the steps per play and wave with tags and task counts, "
                                                  "run nothing.")
@click.option("--list-tags", is_flag=True, help="List the tags of the selected steps, run nothing.")
def apply(playbook: str, inventory: str | None, check: bool, diff: bool, limit: str | None,
          tags: tuple[str, ...], skip_tags: tuple[str, ...], start_at_step: str | None, forks: int,
          state_dir: str, fresh: bool, as_json: bool, verbose: int, quiet: bool,
          accept_new_host_keys: bool, extra_vars: tuple[str, ...], list_hosts: bool, list_tasks: bool,
          list_tags: bool) -> int:
    """Run PLAYBOOK against the inventory, resuming the last run of the same pair.

    --limit takes host, group and user names and wave:NAME, comma separated, or @FILE with
    one a line (after a run with failures, STATE/PLAYBOOK.retry lists them).
    """
    argv = _ARGV or sys.argv[1:]
    try:  # the run's modules take a few tenths of a second to import: a Ctrl-C then started nothing
        from runner.apply import ApplyRequest, apply as run_apply
        from runner.extravars import expand_limit, parse_extra_vars
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted while starting: nothing was started (no task ran, nothing changed)\n"
                   f"to run again: {resume_command(list(argv))}", err=True)
        return EXIT_INTERRUPTED
    req = ApplyRequest(playbook=playbook, inventory=_default_inventory(inventory), check=check, diff=diff,
                       limit=expand_limit(limit), extra_vars=parse_extra_vars(extra_vars),
                       list_hosts=list_hosts, list_tasks=list_tasks, list_tags=list_tags, tags=_split_tags(tags), skip_tags=_split_tags(skip_tags, "--skip-tags"),
                       start_at_step=start_at_step, forks=forks, state_dir=state_dir, fresh=fresh,
                       json=as_json, verbosity=verbose, quiet=quiet, accept_new_host_keys=accept_new_host_keys,
                       resume_command=resume_command(list(argv)))
    return run_apply(req)


@cli.command()
@click.argument("playbook", shell_complete=_complete_files)
@click.option("-i", "--inventory", shell_complete=_complete_files, help="Also validate this inventory and plan the playbook against it.")
def validate(playbook: str, inventory: str | None) -> int:
    """Check PLAYBOOK (and the inventory) without running anything: exit 0 valid, 4 invalid."""
    from runner.loader import LabNotGenerated, inventory_warnings, load_inventory, load_playbook
    from runner.plan import build_plan

    errors: list[InputError] = []

    def collect(exc: InputError) -> None:
        errors.extend(exc.errors if isinstance(exc, InputErrors) else [exc])

    pb = inv = None
    try:
        pb = load_playbook(playbook)
    except InputError as exc:
        collect(exc)
    not_generated = None
    if inventory:
        try:
            inv = load_inventory(inventory)
        except LabNotGenerated as exc:  # the plugin's settings are valid; its lab is made by apply
            not_generated = exc
        except InputError as exc:
            collect(exc)
    if pb is not None and inv is not None:
        try:
            build_plan(pb, inv)
        except InputError as exc:
            collect(exc)
    if errors:
        for e in errors:
            click.echo(InputError.__str__(e))
        click.echo(f"{len(errors)} problem(s) found: not valid (exit 4)", err=True)
        return EXIT_INVALID
    what = f"{playbook} and {inventory}" if inventory else playbook
    if not_generated is not None:
        click.echo(f"note: {InputError.__str__(not_generated)}; the playbook was checked without it", err=True)
        what = f"{playbook} and the lab settings of {inventory}"
    warnings = inventory_warnings(inv) if inv is not None else []
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    # a warning is not a problem: the files are valid and a run goes ahead; say which it is
    click.echo(f"{what}: valid" + (f", with {len(warnings)} warning(s) and no problem" if warnings else ""))
    return EXIT_OK


@cli.command()
@click.option("--state", "state_dir", default=DEFAULT_STATE, show_default=True, type=STATE_DIR,
              help="Directory of the checkpoint store.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def status(state_dir: str, as_json: bool) -> int:
    """Summarise the checkpoint store: runs, what finished, what is left, how to resume."""
    from runner.status import collect_status, render_status

    info = collect_status(Path(state_dir))
    if not info["store"]:
        _refuse_no_store(state_dir)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        click.echo(render_status(info))
    return _damaged_rows(info.get("damaged"))


@cli.command()
@click.option("--state", "state_dir", default=DEFAULT_STATE, show_default=True, type=STATE_DIR,
              help="Directory of the checkpoint store.")
@click.option("--run", "run_id", default=None,
              help="Only this run (an id as 'runner status' shows it; default: every run of the estate, warnings of the newest).")
@click.option("--format", "fmt", type=click.Choice(["text", "html", "csv", "json"]), default="text",
              show_default=True, help="text for a person, html for a manager (one self-contained file), "
                                      "csv for a spreadsheet (one row per user), json for scripts.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the report to this file instead of standard output.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
def report(state_dir: str, run_id: str | None, fmt: str, output: str | None, as_json: bool) -> int:
    """One row per user (where they stand, contacts, Messenger, failures, what to redo by hand) and
    every warning of a run per target: unmappable and over-limit contacts, names cut, reboots..."""
    from runner.report import collect_report, render
    from runner.state import DB_NAME, refuse_lost_store

    refuse_lost_store(Path(state_dir))
    if not (Path(state_dir) / DB_NAME).exists():
        _refuse_no_store(state_dir)
    info = collect_report(Path(state_dir), run_id)
    text = render(info, "json" if as_json else fmt)
    if output:
        from runner.artifacts import write_output
        try:
            write_output(output, text.encode("utf-8"))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(output, 0o666 & ~umask)  # a report is handed on: the usual mode, not the temp file's 0600
        except OSError as exc:
            raise RunnerError(f"cannot write the report to {output}: {exc.strerror or exc}") from None
        click.echo(f"report written to {output} ({len(info['users'])} user(s))", err=True)
    else:
        click.echo(text, nl=not text.endswith("\n"))
    if info.get("unknown_run"):
        if fmt != "text" or as_json or output:
            click.echo(f"ERROR: no run {info['unknown_run']} in {state_dir} (runner status lists the runs)", err=True)
        return EXIT_ERROR
    return _damaged_rows(info.get("damaged"))


@cli.group()
def state() -> None:
    """Repair a state directory (see docs/edited-artifacts.md)."""


@state.command()
@click.argument("users")
@click.option("--state", "state_dir", default=DEFAULT_STATE, show_default=True, type=STATE_DIR,
              help="Directory of the checkpoint store.")
def reexport(users: str, state_dir: str) -> int:
    """Export USERS (aliases, comma separated) again on the next apply, keeping edited files aside."""
    from runner.artifacts import reexport as run_reexport
    from runner.state import StateStore

    aliases = list(dict.fromkeys(u.strip() for u in users.split(",") if u.strip()))
    if not aliases:
        raise click.BadParameter(f"{users!r} names no user", param_hint="USERS")
    with StateStore(state_dir, create=False) as store:
        for r in run_reexport(store, aliases):
            for path, target in r.moved:
                click.echo(f"{r.alias}: moved the edited {path} to {target} (kept, never read again)")
            if not r.moved:
                click.echo(f"{r.alias}: no edited artifact")
            click.echo(f"{r.alias}: the export runs again on the next `runner apply` "
                       f"({r.reopened} earlier export task(s) reopened)")
    return EXIT_OK


def _refuse_no_store(state_dir: str) -> None:
    """A --state without a store is an error (exit 1), for status and report alike: a typo in
    --state must not look like a store with nothing to do."""
    raise RunnerError(f"no state store in {state_dir} (no {state_dir}/state.db): nothing was ever applied "
                      f"with --state {state_dir}; give the directory `runner apply --state` used "
                      f"(default {DEFAULT_STATE})")


def _damaged_rows(damaged: list[str] | None) -> int:
    """Name the store's rows that could not be decoded (on stderr); exit 1 when there are any."""
    if not damaged:
        return EXIT_OK
    for line in damaged:
        click.echo(f"ERROR: {line}", err=True)
    click.echo(f"ERROR: {len(damaged)} damaged record(s) in the checkpoint store; the rest is shown above "
               f"(restore the store from a backup, or move the state directory aside and start with a "
               f"new --state DIR)", err=True)
    return EXIT_ERROR


def _crash_report() -> str:
    path = Path(tempfile.gettempdir()) / f"runner-crash-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    try:
        path.write_text(traceback.format_exc(), encoding="utf-8")
        return str(path)
    except OSError:
        return "(could not write the traceback file)"


def run(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default sys.argv[1:]) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        _ARGV[:] = args
        result: Any = cli.main(args=args, prog_name="runner", standalone_mode=False)
        return result if isinstance(result, int) else EXIT_OK
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `runner` (click >= 8.2): help, not an error
            click.echo(exc.ctx.get_help() if exc.ctx else "")
            return EXIT_OK
        exc.show()
        return EXIT_BAD_OPTIONS
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return EXIT_ERROR
    except InputError as exc:
        click.echo(str(exc), err=True)
        return exc.exit_code
    except RunnerError as exc:
        click.echo(f"ERROR: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:
        where = _crash_report()
        click.echo(f"unexpected error: {type(exc).__name__}: {exc}\n(traceback written to {where})", err=True)
        return EXIT_UNEXPECTED


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run(argv))
