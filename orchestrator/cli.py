"""The ``orchestrator`` command: parse arguments, call the library, print results, return an exit code.

No logic lives here beyond choosing what to call and how to print it. Exit codes (DESIGN.md): 0 done,
1 something failed, 2 bad input or usage. Human output goes to stdout, errors to stderr; ``--json`` prints one
JSON document on stdout in every case, errors included, so scripts never parse prose.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NoReturn

import psycopg

from orchestrator import __version__, config, db, model, state
from orchestrator.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    BadInputError,
    ConfigError,
    OrchestratorError,
    display_path,
)

if TYPE_CHECKING:
    from orchestrator.generator import generate

Handler = Callable[[argparse.Namespace], int]
MAX_PROBLEMS_SHOWN = 100
"""A file of thousands of broken documents is summed up, not scrolled past."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        return _report_config_error(args, exc)
    except OrchestratorError as exc:
        _emit_error(args, str(exc))
        return exc.exit_code
    except psycopg.Error as exc:  # a database error no command turned into a message: one line, no traceback
        text = str(exc).strip()
        _emit_error(args, f"database error: {db.redact(text.splitlines()[0] if text else type(exc).__name__)}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the output was piped into something that stopped reading (head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def run() -> NoReturn:
    """The ``orchestrator`` command (and ``python -m orchestrator``): ``main``, then exit with its code.

    Everything the command made is left out of the interpreter's last garbage collection (``gc.freeze``):
    connections are closed and output flushed by then, and walking a large rollout's objects cost 50 ms of a
    1,000-tenant no-op's exit.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("ORCHESTRATOR_CONFIG", "config")),
        help="manifest directory (env ORCHESTRATOR_CONFIG; default ./config)",
    )
    common.add_argument(
        "--root",
        type=Path,
        default=Path(os.environ.get("ORCHESTRATOR_ROOT", ".")),
        help="directory the Repo paths are relative to (env ORCHESTRATOR_ROOT; default .)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    common.add_argument(
        "--state",
        choices=["files", "database"],
        default=os.environ.get("ORCHESTRATOR_STATE", "files"),
        help="where snapshots and generated migrations live (env ORCHESTRATOR_STATE; default files)",
    )

    parser = argparse.ArgumentParser(prog="orchestrator", description="Keep PostgreSQL schemas in line with YAML.")
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    validate = sub.add_parser("validate", parents=[common], help="load and validate the manifests")
    validate.set_defaults(handler=cmd_validate)

    generate = sub.add_parser(
        "generate-migrations", parents=[common], help="diff resources against snapshots; write migrations and snapshots"
    )
    generate.add_argument("--name", help="migration name (default: migrate_resources)")
    generate.add_argument("--check", action="store_true", help="write nothing; exit 1 if anything would be generated")
    generate.add_argument("--dry-run", action="store_true", help="print the files instead of writing them")
    generate.add_argument("--allow-destructive", action="store_true", help="allow dropping tables and columns")
    generate.add_argument(
        "--allow-blocking",
        action="store_true",
        help="allow changes that rewrite a table under ACCESS EXCLUSIVE (type changes, volatile defaults)",
    )
    generate.add_argument("--repo", help="only this repo")
    generate.set_defaults(handler=cmd_generate)

    create = sub.add_parser("create", parents=[common], help="create each repo's database")
    create.add_argument("--repo", help="only this repo")
    create.set_defaults(handler=cmd_create)

    drop = sub.add_parser("drop", parents=[common], help="drop each repo's database (asks first)")
    drop.add_argument("--repo", help="only this repo")
    drop.add_argument("--force", action="store_true", help="do not ask")
    drop.set_defaults(handler=cmd_drop)

    migrate = sub.add_parser("migrate", parents=[common], help="apply pending migrations")
    migrate.add_argument("--repo", help="only this repo")
    migrate.add_argument("--to", type=int, metavar="V", help="apply pending migrations up to version V")
    migrate.add_argument("--step", type=_positive, metavar="N", help="apply at most N migrations")
    migrate.add_argument("--dry-run", action="store_true", help="print the SQL that would run, in order")
    migrate.add_argument(
        "--strict-version-order",
        action="store_true",
        help="refuse a pending migration older than the newest applied one",
    )
    _tenant_options(migrate)
    migrate.add_argument(
        "--retry-failed", action="store_true", help="with --tenants: only the tenants that failed in their last rollout"
    )
    migrate.set_defaults(handler=cmd_migrate)

    rollback = sub.add_parser("rollback", parents=[common], help="run down migrations (default: one)")
    rollback.add_argument("--repo", help="only this repo")
    group = rollback.add_mutually_exclusive_group()
    group.add_argument("--step", type=_positive, metavar="N", help="roll back the newest N migrations")
    group.add_argument("--to", type=int, metavar="V", help="roll back every migration newer than version V")
    rollback.add_argument("--dry-run", action="store_true", help="print the SQL that would run, in order")
    _tenant_options(rollback)
    rollback.set_defaults(handler=cmd_rollback)

    status = sub.add_parser("status", parents=[common], help="applied, pending and edited migrations")
    status.add_argument("--repo", help="only this repo")
    status.add_argument("--tenants", action="store_true", help="the tenant migrations of every listed tenant")
    status.set_defaults(handler=cmd_status)

    drift = sub.add_parser(
        "drift", parents=[common], help="compare each target's live catalog with the model of its applied version"
    )
    drift.add_argument("--repo", help="only this repo")
    _tenant_options(drift)
    drift.set_defaults(handler=cmd_drift)

    repair = sub.add_parser(
        "repair", parents=[common], help="record the new checksums of applied migrations edited on purpose"
    )
    repair.add_argument("--repo", help="only this repo")
    repair.add_argument("--tenants", action="store_true", help="the tenant migrations of every listed tenant")
    repair.set_defaults(handler=cmd_repair)

    regen = sub.add_parser(
        "regen", parents=[common], help="roll back and delete untracked migrations and snapshots, then generate again"
    )
    regen.add_argument("-m", "--migrate", action="store_true", help="migrate afterwards")
    regen.add_argument("--name", help="migration name (default: migrate_resources)")
    regen.set_defaults(handler=cmd_regen)

    withdraw = sub.add_parser(
        "withdraw",
        parents=[common],
        help="delete the newest generated migration(s) and their snapshots, when applied nowhere",
    )
    withdraw.add_argument(
        "version",
        nargs="?",
        type=int,
        metavar="VERSION",
        help="a version of the newest generation (default: all of it; its tenant migration's: that part only)",
    )
    withdraw.add_argument("--repo", help="only this repo")
    withdraw.add_argument("--dry-run", action="store_true", help="say what would be deleted; delete nothing")
    withdraw.set_defaults(handler=cmd_withdraw)

    serve = sub.add_parser("serve", parents=[common], help="the daemon: reconcile on change, serve status over HTTP")
    serve.add_argument("--interval", type=_duration_s, default=30.0, metavar="D", help="how often to check (30s)")
    serve.add_argument(
        "--drift-interval",
        type=_duration_or_zero_s,
        default=300.0,
        metavar="D",
        help="how often to compare the live catalogs with the model (5m; 0 disables)",
    )
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="HTTP address")
    serve.add_argument("--no-generate", action="store_true", help="apply existing migrations only")
    serve.add_argument("--once", action="store_true", help="one reconcile, then exit with migrate's exit code")
    serve.add_argument("--token-file", type=Path, help="file holding the API token (else ORCHESTRATOR_API_TOKEN)")
    serve.add_argument(
        "--stuck-after",
        type=_duration_s,
        default=1800.0,
        metavar="D",
        help="a job with no progress for this long fails /healthz (30m)",
    )
    serve.set_defaults(handler=cmd_serve)

    tenants_cmd = sub.add_parser("tenants", parents=[common], help="print what each repo's tenant source returns")
    tenants_cmd.add_argument("--repo", help="only this repo")
    tenants_cmd.set_defaults(handler=cmd_tenants)

    import_cmd = sub.add_parser(
        "import", parents=[common], help="write manifests and a baseline from a live database (see README)"
    )
    import_cmd.add_argument("--repo", required=True, help="the repo whose database is read")
    import_cmd.add_argument(
        "--tenant-template", metavar="S", help="the tenant schema read for tenant tables (default: the first listed)"
    )
    import_cmd.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: the Repo's directory)")
    import_cmd.set_defaults(handler=cmd_import)
    return parser


# -- commands ------------------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.json:
        _print_json({"valid": True, "problems": [], "repos": [_repo_summary(cfg, r) for r in cfg.repos]})
        return EXIT_OK
    tenant_tables = sum(1 for t in cfg.tables if t.is_tenant)
    print(
        f"OK: {len(cfg.repos)} repo{'s' if len(cfg.repos) != 1 else ''}, {len(cfg.tables)} tables "
        f"({len(cfg.tables) - tenant_tables} global, {tenant_tables} per tenant) in {args.config}"
    )
    for repo in cfg.repos:
        tables = ", ".join(t.key for t in cfg.tables_of(repo.name)) or "no tables"
        print(f"  {repo.name}: {tables}")
    return EXIT_OK


def _tenant_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenants", action="store_true", help="the tenant migrations, in every tenant the repo's source lists"
    )
    parser.add_argument("--only-tenants", type=_names, metavar="A,B", help="with --tenants: only these tenants")
    parser.add_argument("--except-tenants", type=_names, default=[], metavar="C", help="with --tenants: not these")


def _duration_s(text: str) -> float:
    from orchestrator import durations

    try:
        return max(durations.parse_ms(text), 100) / 1000
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration_or_zero_s(text: str) -> float:
    """A duration where 0 (or ``0s``) means off."""
    from orchestrator import durations

    if text.strip() == "0":
        return 0.0
    try:
        ms = durations.parse_ms(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return 0.0 if ms == 0 else max(ms, 100) / 1000


def cmd_serve(args: argparse.Namespace) -> int:
    from orchestrator.daemon import reconcile, serve, service

    _check_urls_at_start(args)
    if args.once:
        report = reconcile.reconcile(
            args.config, args.root, state_kind=args.state, generate_migrations=not args.no_generate
        )
        if args.json:
            _print_json(report.as_dict())
        elif report.problems:
            print(f"reconcile of {report.revision}: failed")
            return _report_config_error(args, ConfigError(report.problems))
        else:
            for error in report.errors:
                print(f"error: {error}", file=sys.stderr)
            print(f"reconcile of {report.revision}: {'ok' if report.ok else 'failed'}")
        if report.problems:
            return EXIT_BAD_INPUT
        return EXIT_OK if report.ok else EXIT_FAILED
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        raise BadInputError(f"--listen {args.listen!r}: write HOST:PORT")
    daemon = service.Service(
        args.config, args.root, state_kind=args.state, generate=not args.no_generate, stuck_after_s=args.stuck_after
    )
    return serve.serve(
        daemon,
        interval_s=args.interval,
        host=host,
        port=int(port),
        api_token=serve.token(args.token_file),
        drift_interval_s=args.drift_interval,
    )


def _check_urls_at_start(args: argparse.Namespace) -> None:
    """``serve`` exits 2 at once when the environment leaves a repo without its URL (an unset variable, or no URL
    with the embedded server switched off): that cannot change while the process runs. Invalid manifests are
    left to the daemon, which reports them and keeps serving (``--once``: reports them, exit 2)."""
    try:
        cfg = config.load(args.config)
    except ConfigError:
        return
    db.check_urls(cfg.repos, args.root)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _runner(args: argparse.Namespace) -> Any:
    from orchestrator.migrations import runner  # psycopg only for commands that use a database

    cfg = config.load(args.config)
    db.check_urls(_select_repos(cfg, getattr(args, "repo", None)), args.root)
    return runner.Runner(cfg, args.root, sink=_sink(args), state_kind=args.state)


def _sink(args: argparse.Namespace) -> Any:
    """How a command shows the run's events: text lines for global targets on stdout; per tenant, the
    progress bar on a terminal, else one structured log line per event on stderr; ``--json``: every event
    as a JSON log line on stderr (stdout keeps the one JSON document)."""
    from orchestrator.migrations import events

    if args.json:
        return events.LazyLogSink("orchestrator", json=True)
    text = events.TextSink(print)
    log: events.Sink = events.discard  # on a terminal the progress bar shows the tenants
    if not sys.stderr.isatty():
        log = events.LazyLogSink("rollout")

    def sink(event: events.Event) -> None:
        if event.target.tenant is None or isinstance(event, events.Planned):
            text(event)
        else:
            log(event)

    return sink


def cmd_create(args: argparse.Namespace) -> int:
    from orchestrator import db

    cfg = config.load(args.config)
    repos = _select_repos(cfg, args.repo)
    db.check_urls(repos, args.root)
    for repo in repos:
        created = db.create_database(repo, args.root)
        print(f"{repo.name}: {'created' if created else 'already exists'}")
    return EXIT_OK


def cmd_drop(args: argparse.Namespace) -> int:
    from orchestrator import db

    cfg = config.load(args.config)
    repos = _select_repos(cfg, args.repo)
    db.check_urls(repos, args.root)
    if not args.force:
        if not sys.stdin.isatty():
            raise BadInputError("drop needs --force when not run on a terminal")
        names = ", ".join(r.name for r in repos)
        if input(f"Drop the database of {names}? Everything in it is lost. [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing dropped")
            return EXIT_OK
    for repo in repos:
        dropped = db.drop_database(repo, args.root)
        print(f"{repo.name}: {'dropped' if dropped else 'does not exist'}")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.tenants:
        return _tenant_rollout(args, "up")
    if args.retry_failed or args.only_tenants or args.except_tenants:
        raise BadInputError("--retry-failed, --only-tenants and --except-tenants go with --tenants")
    with _runner(args) as run:
        report = _migrate_globals(
            run, args.repo, to=args.to, step=args.step, strict=args.strict_version_order, dry_run=args.dry_run
        )
    if args.json:
        _print_json({"repos": report})
    return EXIT_OK


def _migrate_globals(
    run: Any,
    repo: str | None,
    *,
    to: int | None = None,
    step: int | None = None,
    strict: bool = False,
    dry_run: bool = False,
) -> list[dict[str, Any]]:
    """``migrate``'s global part: each repo's pending global migrations; the ``--json`` rows."""
    report = []
    for item in run.repos(repo):
        done = run.migrate(item, to=to, step=step, strict=strict, dry_run=dry_run)
        report.append({"repo": item.name, "applied": [m.path.name for m in done], "dry_run": dry_run})
    return report


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.tenants:
        return _tenant_rollout(args, "down")
    if args.only_tenants or args.except_tenants:
        raise BadInputError("--only-tenants and --except-tenants go with --tenants")
    report = []
    with _runner(args) as run:
        for repo in run.repos(args.repo):
            done = run.rollback(repo, step=args.step, to=args.to, dry_run=args.dry_run)
            report.append({"repo": repo.name, "rolled_back": [m.path.name for m in done], "dry_run": args.dry_run})
    if args.json:
        _print_json({"repos": report})
    return EXIT_OK


def _tenant_rollout(args: argparse.Namespace, direction: str) -> int:
    from orchestrator.migrations import rollout
    from orchestrator.migrations.loop import Action

    options = rollout.Options(
        action=Action.MIGRATE if direction == "up" else Action.ROLLBACK,
        only=args.only_tenants,
        exclude=args.except_tenants,
        retry_failed=getattr(args, "retry_failed", False),
        step=args.step,
        to=args.to,
        dry_run=args.dry_run,
        strict=getattr(args, "strict_version_order", False),
    )
    with _runner(args) as run:
        reports = _roll_out(run, args.repo, options, progress=sys.stderr.isatty() and not args.json)
    if args.json:
        _print_json({"repos": _rollout_json(reports)})
    elif not args.dry_run:
        for name, results in reports:
            _print_rollout(name, results)
    return EXIT_FAILED if _any_failed(reports) else EXIT_OK


Rollouts = list[tuple[str, list[Any]]]
"""Per repo with a tenant source: its name and one ``rollout.TenantResult`` per tenant."""


def _roll_out(run: Any, repo: str | None, options: Any, *, progress: bool) -> Rollouts:
    """``migrate --tenants`` / ``rollback --tenants``: the rollout of every repo with a tenant source (a repo
    named with --repo must have one)."""
    reports = []
    for item in run.repos(repo):
        if item.tenants is None:
            if repo:
                raise BadInputError(f"repo {item.name!r} has no tenants source (spec.tenants)")
            continue
        reports.append((item.name, run.tenant_rollout(item, progress=progress).run(options)))
    return reports


def _rollout_json(reports: Rollouts) -> list[dict[str, Any]]:
    return [{"repo": name, "tenants": [r.as_dict() for r in results]} for name, results in reports]


def _any_failed(reports: Rollouts) -> bool:
    """A tenant failed, or was held back by a canary: the rollout did not finish."""
    return any(r.status in ("failed", "held") for _, results in reports for r in results)


def _print_rollout(repo: str, results: list[Any]) -> None:
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"{repo}: {len(results)} tenants: {summary or 'none listed'}")
    shown = [r for r in results if r.status not in ("up to date",)]
    if not shown:
        return
    if len(shown) > 50:  # a summary line per state is enough for a large fleet; failures always shown
        shown = [r for r in shown if r.status in ("failed", "skipped", "held")]
    width = max([len("tenant"), *(len(r.tenant) for r in shown)])
    print(f"  {'tenant':<{width}}  {'status':<11}  {'tries':>5}  {'ms':>6}  detail")
    for r in shown:
        detail = r.error or ", ".join(r.applied)
        print(f"  {r.tenant:<{width}}  {r.status:<11}  {r.attempts:>5}  {r.ms:>6}  {detail}")


def cmd_status(args: argparse.Namespace) -> int:
    if args.tenants:
        return _tenant_status(args)
    with _runner(args) as run:
        statuses = [run.status(repo) for repo in run.repos(args.repo)]
    if args.json:
        _print_json({"targets": [s.as_dict() for s in statuses]})
    else:
        for status in statuses:
            print(f"{status.target}: {len(status.applied)} applied, {len(status.pending)} pending")
            for version, name, state in status.applied:
                print(f"  {state:<12} {version}_{name}")
            for version, name in status.pending:
                print(f"  {'pending':<12} {version}_{name}")
    edited = any(state == "edited" for s in statuses for _, _, state in s.applied)
    return EXIT_FAILED if edited else EXIT_OK


def _tenant_status(args: argparse.Namespace) -> int:
    with _runner(args) as run:
        reports = [run.tenant_status(repo) for repo in run.repos(args.repo) if repo.tenants is not None]
    if args.json:
        _print_json({"repos": reports})
    else:
        for report in reports:
            rows = report["tenants"]
            behind = [t for t in rows if t["pending"]]
            failed = [t for t in rows if t["last_status"] == "failed"]
            edited = [t for t in rows if t["edited"]]
            print(
                f"{report['repo']}: {len(rows)} tenants, {len(rows) - len(behind)} up to date, {len(behind)} behind, "
                f"{len(failed)} failed in their last rollout, {len(edited)} with edited migrations"
            )
            for tenant in rows:
                if tenant["pending"] or tenant["last_status"] == "failed" or tenant["edited"]:
                    error = f"  last error: {tenant['last_error']}" if tenant["last_status"] == "failed" else ""
                    changed = f", edited: {', '.join(map(str, tenant['edited']))}" if tenant["edited"] else ""
                    print(
                        f"  {tenant['tenant']}: {len(tenant['applied'])} applied, "
                        f"{len(tenant['pending'])} pending{changed}{error}"
                    )
    bad = any(t["pending"] or t["last_status"] == "failed" or t["edited"] for r in reports for t in r["tenants"])
    return EXIT_FAILED if bad else EXIT_OK


def cmd_drift(args: argparse.Namespace) -> int:
    from orchestrator import drift

    if not args.tenants and (args.only_tenants or args.except_tenants):
        raise BadInputError("--only-tenants and --except-tenants need --tenants")
    with _runner(args) as run:
        repos = [r for r in run.repos(args.repo) if r.tenants is not None or not args.tenants]
        if args.tenants and args.repo and not repos:
            raise BadInputError(f"repo {args.repo!r} has no tenants source (spec.tenants)")
        reports = [
            drift.check(run, r, tenant_scope=args.tenants, only=args.only_tenants, exclude=args.except_tenants)
            for r in repos
        ]
    checked = sum(len(r.targets) for r in reports)
    drifted = sum(len(r.drifted) for r in reports)
    if args.json:
        _print_json({"checked": checked, "drifted": drifted, "repos": [r.as_dict() for r in reports]})
    else:
        _print_drift(reports)
        print(f"{drifted} of {checked} target{'s' if checked != 1 else ''} drifted")
    return EXIT_FAILED if drifted else EXIT_OK


def _print_drift(reports: list[Any]) -> None:
    for report in reports:
        for target in report.targets:
            if target.status == "ok":
                continue
            at = f" (model at {target.version})" if target.version else ""
            count = len(target.differences)
            what = "schema missing" if target.status == "missing" else f"{count} difference{'s' if count != 1 else ''}"
            print(f"{target.target}: {what}{at}")
            for line in target.differences:
                print(f"  - {line}")


def cmd_repair(args: argparse.Namespace) -> int:
    with _runner(args) as run:
        if args.tenants:
            fixed: list[Any] = [v for repo in run.repos(args.repo) if repo.tenants for v in run.repair_tenants(repo)]
        else:
            fixed = [v for repo in run.repos(args.repo) for v in run.repair(repo)]
    if not fixed and not args.json:
        print("nothing to repair: every applied migration matches its file")
    if args.json:
        _print_json({"repaired": fixed})
    return EXIT_OK


def cmd_regen(args: argparse.Namespace) -> int:
    """Roll back and delete what git does not track, generate again, and with ``-m`` migrate globals and then
    every tenant. ``--json``: one document whose parts are what ``rollback``, ``generate-migrations``,
    ``migrate`` and ``migrate --tenants`` print with ``--json``, plus the deleted files."""
    from orchestrator.migrations import regen

    if args.state != "files":
        raise BadInputError("regen works on migration files in a git checkout; it has no meaning with --state database")
    from orchestrator.generator import generate

    regen.check_checkout(args.root)
    doc: dict[str, Any] = {"rollback": None, "deleted": [], "generate": None, "migrate": None, "migrate_tenants": None}
    code = EXIT_OK
    with _runner(args) as run:
        rollbacks = regen.roll_back_untracked(run, run.repos(None))
        doc["rollback"] = {"repos": [r.as_dict() for r in rollbacks]}
        failed = [r for r in rollbacks if r.failed]
        if failed:
            code = _regen_error(args, doc, f"{failed[0].error}; nothing was deleted or generated")
            if failed[0].tenants and not args.json:
                _print_rollout(failed[0].repo, failed[0].tenants)
        else:
            for path in (path for r in rollbacks for path in r.files):
                path.unlink()
                doc["deleted"].append(_shown(path, args.root))
                if not args.json:
                    print(f"deleted {_shown(path, args.root)}")
            result = generate.plan(run.cfg, run.store, name=args.name, root=args.root)
            result.write(state.FileStore(args.root))  # regen works on files only
            doc["generate"] = _plan_json(result, args.root)
            if not args.json:
                _print_plan(result, args.root, preview=False)
            if args.migrate:
                code = _regen_migrate(run, args, doc)
    if args.json:
        _print_json(doc)
    return code


def _regen_migrate(run: Any, args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """``migrate`` then ``migrate --tenants``, their reports in ``doc``; exit 1 when a target failed."""
    from orchestrator.migrations import rollout

    try:
        doc["migrate"] = {"repos": _migrate_globals(run, None)}
    except OrchestratorError as exc:  # a global migration failed: no tenant is started
        return _regen_error(args, doc, str(exc), exc.exit_code)
    reports = _roll_out(run, None, rollout.Options(), progress=sys.stderr.isatty() and not args.json)
    doc["migrate_tenants"] = {"repos": _rollout_json(reports)}
    if not args.json:
        for name, results in reports:
            _print_rollout(name, results)
    return EXIT_FAILED if _any_failed(reports) else EXIT_OK


def _regen_error(args: argparse.Namespace, doc: dict[str, Any], message: str, code: int = EXIT_FAILED) -> int:
    doc["error"] = message
    if not args.json:
        print(f"error: {message}", file=sys.stderr)
    return code


def cmd_withdraw(args: argparse.Namespace) -> int:
    from orchestrator.migrations import withdraw

    with _runner(args) as run:
        try:
            done = withdraw.withdraw(run, run.repos(args.repo), args.version, dry_run=args.dry_run)
        except withdraw.AppliedError as exc:
            if args.json:
                _print_json({"error": str(exc), "applied": exc.places})
            else:
                print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.json:
        _print_json({"repos": [w.as_dict() | {"dry_run": args.dry_run} for w in done]})
    else:
        _print_withdrawals(done, args.dry_run)
    return EXIT_OK


def _print_withdrawals(done: list[Any], dry_run: bool) -> None:
    would = "would " if dry_run else ""
    for item in done:
        names = ", ".join(f"{PurePosixPath(e.path).name} ({e.scope})" for e in item.migrations)
        print(
            f"{item.repo}: {'would withdraw' if dry_run else 'withdrew'} {names}: applied nowhere "
            f"(checked {item.schemas} schemas with schema_migrations, {item.tenants} listed tenants)"
        )
        for path in item.deleted:
            print(f"  {would}delete {path}")
        for path in item.rewritten:
            print(f"  {would}rewrite {path}")
    if not dry_run:
        print("the previous snapshots are the newest again: fix the manifests, then generate-migrations")


def cmd_generate(args: argparse.Namespace) -> int:
    from orchestrator.generator import generate  # imported by the commands that generate: the others start faster

    cfg = config.load(args.config)
    write = not (args.check or args.dry_run)
    result = generate.run(
        cfg,
        args.root,
        state_kind=args.state,
        repo=args.repo,
        name=args.name,
        allow_destructive=args.allow_destructive,
        allow_blocking=args.allow_blocking,
        write=write,
    )
    if args.json:
        _print_json(_plan_json(result, args.root))
    else:
        _print_plan(result, args.root, not write)
    return EXIT_FAILED if args.check and not result.empty else EXIT_OK


def _print_plan(result: generate.Plan, root: Path, preview: bool) -> None:
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.empty:
        print("No changes detected, so no migrations or snapshots were written.")
        return
    verb = "would write" if preview else "wrote"
    for migration in result.migrations:
        print(f"{migration.repo} ({migration.scope}): {verb} {_shown(migration.path, root)}")
        for op in migration.operations:
            print(f"    {op.describe()}")
    for snapshot in result.snapshots:
        print(f"{verb} {_shown(snapshot.path, root)}")
    if preview:
        for path, text in result.files():
            print(f"\n==> {_shown(path, root)} <==\n{text}", end="")


def _plan_json(result: generate.Plan, root: Path) -> dict[str, Any]:
    return {
        "changes": not result.empty,
        "migrations": [
            {
                "repo": m.repo,
                "scope": m.scope,
                "path": _shown(m.path, root),
                "operations": [op.describe() for op in m.operations],
            }
            for m in result.migrations
        ],
        "snapshots": [_shown(s.path, root) for s in result.snapshots],
        "warnings": result.warnings,
    }


def _shown(path: Path, root: Path) -> str:
    return display_path(path, root)


def cmd_tenants(args: argparse.Namespace) -> int:
    from orchestrator import tenants  # psycopg is imported only by commands that use a database

    cfg = config.load(args.config)
    repos = _select_repos(cfg, args.repo)
    listed = [tenants.list_tenants(r, _connection_for(r, args.root)) for r in repos if r.tenants]
    skipped = [r.name for r in repos if r.tenants is None]
    if args.repo and skipped:
        raise BadInputError(f"repo {args.repo!r} has no tenants source (spec.tenants)")
    if args.json:
        _print_json({"repos": [t.as_dict() for t in listed], "without_tenants": skipped})
    else:
        _print_tenants(listed, skipped)
    return EXIT_FAILED if any(t.invalid for t in listed) else EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from orchestrator.importer import run as importer  # psycopg and the generator only for this command

    options = importer.Options(
        repo=args.repo,
        config_dir=args.config,
        root=args.root,
        out=args.out,
        template=args.tenant_template,
        state_kind=args.state,
    )
    report = importer.run(options)
    if args.json:
        _print_json(report.as_dict(args.root))
    else:
        _print_import(report, args.root)
    return report.exit_code


def _print_import(report: Any, root: Path) -> None:
    template = f", tenant template {report.template}" if report.template else ""
    print(f"{report.repo}: imported {len(report.written)} tables from database {report.database}{template}")
    for item in report.written:
        print(f"  wrote {_shown(item.path, root)} ({item.key}, resource {item.resource})")
    for key, resource in report.already_defined:
        print(f"  skipped {key}: already defined by resource {resource!r}")
    if report.unsupported:
        print(f"not imported ({len(report.unsupported)}; the manifest format cannot express them):")
        for item in report.unsupported:
            print(f"  {item}")
    for name in report.extensions:
        print(f"note: extension {name} is installed; add it to the Repo's extensions for an empty database")
    if report.baseline_note:
        print(f"baseline: {report.baseline_note}")
    for path in report.migrations:
        print(f"baseline: wrote {_shown(path, root)}")
    checked = report.tenants
    if report.migrations:
        print(f"baseline: recorded as applied in {report.repo}", end="")
        print(f" and {len(checked.matching)} tenant schema(s)" if checked.matching else "")
    if checked.behind:
        print(f"tenants without tables (migrate --tenants creates them): {', '.join(checked.behind)}")
    for tenant, found in checked.differing.items():
        print(f"tenant {tenant} differs from the template, not recorded ({len(found)} differences):", file=sys.stderr)
        for line in found:
            print(f"  {line}", file=sys.stderr)


# -- helpers -------------------------------------------------------------------------------------------------


def _redact(url: str) -> str:
    from orchestrator import db

    return db.redact(url)


def _select_repos(cfg: model.Config, name: str | None) -> tuple[model.Repo, ...]:
    if name is None:
        return cfg.repos
    repo = cfg.repo(name)
    if repo is None:
        known = ", ".join(r.name for r in cfg.repos)
        raise BadInputError(f"unknown repo {name!r} (known: {known})")
    return (repo,)


def _connection_for(repo: model.Repo, root: Path) -> Any:
    from orchestrator import db

    if repo.tenants is None or repo.tenants.kind == "static":
        return None
    return db.connect(repo, root)


def _print_tenants(listed: list[Any], skipped: list[str]) -> None:
    for result in listed:
        count = len(result.tenants)
        print(f"{result.repo} ({result.source}): {count} tenant{'s' if count != 1 else ''}")
        for name in result.tenants:
            print(f"  {name}")
        if result.note:
            print(f"  note: {result.note}")
        for name in result.invalid:
            print(f"{result.repo}: rejected tenant name {name!r}: not a valid schema name", file=sys.stderr)
    for name in skipped:
        print(f"{name}: no tenants source")


def _repo_summary(cfg: model.Config, repo: model.Repo) -> dict[str, Any]:
    return {
        "name": repo.name,
        "url": _redact(repo.url) if repo.url else None,
        "urlFile": repo.url_file,
        "tenants": repo.tenants.kind if repo.tenants else None,
        "tables": [
            {"resource": t.resource, "table": t.key, "tenant": t.is_tenant, "hash": t.content_hash()}
            for t in cfg.tables_of(repo.name)
        ],
    }


def _report_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    if getattr(args, "json", False):
        _print_json({"valid": False, "problems": [p.as_dict() for p in exc.problems]})
    else:
        for problem in exc.problems[:MAX_PROBLEMS_SHOWN]:
            print(problem, file=sys.stderr)
        hidden = len(exc.problems) - MAX_PROBLEMS_SHOWN
        if hidden > 0:
            print(f"... and {hidden} more (--json lists them all)", file=sys.stderr)
        print(f"{exc}; nothing was written or applied", file=sys.stderr)
    return exc.exit_code


def _emit_error(args: argparse.Namespace, message: str) -> None:
    if getattr(args, "json", False):
        _print_json({"error": message})
    else:
        print(f"error: {message}", file=sys.stderr)


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
