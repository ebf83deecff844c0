"""The `seedrun` command. Each subcommand imports what it needs when it runs, so that commands that
do not train (`--help`, `status`, `table`, `list`) start in a fraction of a second without torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

EXIT_BAD_INPUT = 2


def _db_url(args) -> str:
    from seedrun.store.locations import default_db_url

    return args.db or default_db_url()


def _db_exists(url: str) -> bool:
    if url.startswith("sqlite:///"):
        import os

        return os.path.exists(url.removeprefix("sqlite:///"))
    return True


def cmd_sweep(args) -> int:
    from rich.console import Console

    from seedrun.launchers.plan_view import print_header, show_dry_run
    from seedrun.sweeps.sweep_file import expand

    console = Console()
    sweep = expand(args.file, args.overrides, dry_run=args.dry_run, data_root=args.data_root)
    db_url = _db_url(args)
    if args.dry_run and not _db_exists(db_url):  # nothing recorded yet: no database to read (nor SQLAlchemy to load)
        return show_dry_run(console, sweep, {}, 0, args.retry_failed, args.all, args.json)
    from seedrun.store.plan import read_plan, record

    plan = read_plan(sweep, db_url)
    if args.dry_run:
        return show_dry_run(console, sweep, plan.states, len(plan.stale), args.retry_failed, args.all, args.json)
    launcher = print_header(console, sweep, plan.states, len(plan.stale))

    record(plan, db_url)
    todo = plan.to_run(retry_failed=args.retry_failed)
    if launcher == "slurm":
        from seedrun.launchers.slurm import submit_slurm

        submit_slurm(plan, todo, db_url, args.data_root, console)
        return 0
    if todo:
        from seedrun.launchers.local import run_local

        outcome = run_local(plan, todo, db_url, args.data_root, console)
        console.print(f"completed {outcome['completed']}  failed {outcome['failed']}  blocked {outcome['blocked']}")
    else:
        outcome = {"failed": 0, "blocked": 0}
        console.print("nothing to run: every run is done or in flight")
    if sweep.ablation:
        _print_table(console, sweep.ablation, db_url, sweep.name, "rich", paper=True)
        _print_references(db_url, sweep.name)
    if outcome["failed"] or outcome["blocked"]:
        console.print("some runs failed: `seedrun status` lists them, `seedrun logs RUN` shows why")
        return 1
    return 0


def _print_references(db_url: str, sweep: str) -> None:
    """The sweep's teachers and baselines, and raw pixels: what a reader judges the table's numbers by."""
    from seedrun.store.records import load_records

    for record in load_records(db_url, sweep=sweep, stage="pretrain"):
        p, top1 = record.config.get("pretrain", {}), record.metrics.get("knn_top1")
        if top1 is None:
            continue
        who = "teacher" if p.get("role", "teacher") == "teacher" else "student alone (baseline)"
        print(f"{who}: {p.get('method')} {p.get('arch')} width {p.get('width')}, {p.get('epochs')} epochs: "
              f"k-NN top-1 {top1:.1f}")
        if "pixels_knn_top1" in record.metrics and who == "teacher":
            print(f"raw pixels, same k-NN: top-1 {record.metrics['pixels_knn_top1']:.1f}")


def _table_groups(ablation: str, db_url: str, sweep: Optional[str], protocol: Optional[str] = None) -> list:
    """The runs that can fill the table, grouped by the database (seedrun.store.groups.load_groups);
    linear and transfer columns read the results of one probe protocol (seedrun.store.protocols)."""
    from seedrun.store.groups import load_groups
    from seedrun.store.protocols import candidates
    from seedrun.tables import get_table
    from seedrun.tables.build import metric_names, stages

    table = get_table(ablation)
    metrics = metric_names(table)
    return load_groups(db_url, sweep=sweep, stages=stages(table), metrics=metrics,
                       names={metric: candidates(metric, protocol) for metric in metrics})


def _print_table(console, ablation: str, db_url: str, sweep: Optional[str], fmt: str, paper: bool,
                 protocol: Optional[str] = None) -> None:
    from seedrun.store.protocols import protocol_note
    from seedrun.tables import build_table, render

    data = build_table(ablation, _table_groups(ablation, db_url, sweep, protocol), paper=paper)
    note = protocol_note({column.metric for column in data.columns}, protocol)
    if note:
        data.notes.append(note)
    output = render(data, fmt)
    if isinstance(output, str):
        print(output, end="" if output.endswith("\n") else "\n")
    else:
        console.print(output)


def _no_cycle_collection() -> None:
    """For the short reading commands: 10,000 runs' records make the cycle collector run dozens of
    times for nothing (they hold no cycles; refcounting frees them), a tenth of `status`'s time."""
    import gc

    gc.disable()


def cmd_status(args) -> int:
    from seedrun.views.status import show_status

    _no_cycle_collection()
    _catch_up(_db_url(args))
    return show_status(_db_url(args), args.sweep, as_json=args.json, check_jobs=not args.no_reconcile)


def _catch_up(db_url: str) -> None:
    """The index brought up to date from the folders of the runs it holds in flight (seedrun.store.catchup)."""
    if _db_exists(db_url):
        from seedrun.store.catchup import catch_up

        catch_up(db_url)


def cmd_db_upgrade(args) -> int:
    """Bring the database's schema to this release's (seedrun.store.migrations); a no-op when it is."""
    from sqlalchemy import create_engine

    from seedrun.errors import database_error
    from seedrun.store.engine import engine_for
    from seedrun.store.migrate import schema_version
    from seedrun.store.migrations import HEAD

    db_url = _db_url(args)
    before = None
    if _db_exists(db_url):
        try:
            with create_engine(db_url).connect() as connection:
                before = schema_version(connection)
        except Exception as exc:  # no driver, no server
            raise database_error(db_url, exc) from exc
    engine_for(db_url)  # upgrades it
    print(f"schema {HEAD}" + (" (already)" if before == HEAD else f" (was {before or 'before versions'})"))
    return 0


def cmd_sync(args) -> int:
    """Build or repair the database from run folders (seedrun.store.sync)."""
    import os

    from seedrun.errors import InputError
    from seedrun.store.locations import seedrun_home
    from seedrun.store.sync import sync

    folders = args.folders or [str(seedrun_home() / "runs")]
    for folder in folders:
        if not os.path.isdir(folder):
            raise InputError("sync", "FOLDER", f"{folder} is not a folder (give run folders or folders of them)")
    _, report = sync(_db_url(args), folders)
    for line in report:
        print(line)
    return 0


def cmd_table(args) -> int:
    from seedrun.tables import list_tables

    _no_cycle_collection()
    if args.list:
        for name, title in list_tables():
            print(f"{name:<14} {title}")
        return 0
    if not args.ablation:
        raise _usage("table: give --ablation NAME (see --list)")
    from rich.console import Console

    from seedrun.tables import get_table

    get_table(args.ablation)  # an unknown name fails before the database is opened
    if args.protocol is not None and args.protocol not in ("moco", "compress"):
        raise _usage(f"table: --protocol: expected moco or compress, got {args.protocol!r}")
    db_url = _db_url(args)
    _catch_up(db_url)
    if args.plot:
        from seedrun.tables import plot_table

        plot_table(args.ablation, _table_groups(args.ablation, db_url, args.sweep, args.protocol)
                   if _db_exists(db_url) else [],
                   args.plot)
        print(f"wrote {args.plot}")
    if _db_exists(db_url):
        _print_table(Console(), args.ablation, db_url, args.sweep, args.format, args.paper, args.protocol)
    else:
        from seedrun.tables import build_table, render

        output = render(build_table(args.ablation, [], paper=args.paper), args.format)
        Console().print(output) if not isinstance(output, str) else print(output, end="")
    return 0


def cmd_eval(args) -> int:
    """Evaluate finished runs with one protocol, as evaluation runs of their own; nothing retrains."""
    from rich.console import Console

    from seedrun.errors import InputError
    from seedrun.store.plan import add_runs, read_plan
    from seedrun.store.records import load_records
    from seedrun.sweeps.spec import RunSpec
    from seedrun.sweeps.sweep_file import Sweep, evaluation_run

    db_url = _db_url(args)
    if not _db_exists(db_url):
        raise InputError("eval", "TARGET", f"no runs recorded yet ({db_url})")
    records = [r for r in load_records(db_url) if r.stage in ("pretrain", "distill")]
    chosen = [r for r in records if r.sweep == args.target] or [r for r in records if r.hash.startswith(args.target)]
    if not chosen:
        raise InputError("eval", "TARGET", f"no sweep or run matches {args.target!r}")
    unfinished = [r.hash[:12] for r in chosen if r.state != "completed"]
    chosen = [r for r in chosen if r.state == "completed"]
    by_sweep: dict[str, list] = {}
    for record in chosen:
        trained = RunSpec(record.stage, record.config, axes=record.axes)
        trained.hash = record.hash
        by_sweep.setdefault(record.sweep, []).append(evaluation_run(trained, args.protocol, "eval --protocol"))
    console = Console()
    if unfinished:
        console.print(f"skipping {len(unfinished)} unfinished run(s): {' '.join(unfinished)}")
    for sweep_name, specs in by_sweep.items():
        add_runs(db_url, sweep_name, specs)
        sweep = Sweep(name=sweep_name, path="eval", ablation=None, runs=specs, axes=[], launcher={})
        plan = read_plan(sweep, db_url)
        todo = plan.to_run(retry_failed=args.retry_failed)
        console.print(f"{sweep_name}: {len(specs)} evaluation(s) with {args.protocol}, {len(todo)} to run")
        if not todo:
            continue
        if (specs[0].config.get("launcher") or {}).get("name") == "slurm":
            from seedrun.launchers.slurm import submit_slurm

            submit_slurm(plan, todo, db_url, args.data_root, console)
        else:
            from seedrun.launchers.local import run_local

            run_local(plan, todo, db_url, args.data_root, console)
    return 0


def cmd_logs(args) -> int:
    from seedrun.views.logs import show_logs

    return show_logs(_db_url(args), args.run)


def cmd_retry(args) -> int:
    from seedrun.launchers.control import retry

    return retry(_db_url(args), failed=args.failed, reason=args.reason, sweep=args.sweep)


def cmd_cancel(args) -> int:
    from seedrun.launchers.control import cancel

    return cancel(_db_url(args), args.target)


def cmd_teacher_inspect(args) -> int:
    from seedrun.models.teacher_inspect import format_inspection, inspect

    result = inspect(args.path)
    print(format_inspection(result))
    return 0 if result.get("verdict") == "ok" else EXIT_BAD_INPUT


def cmd_list(args) -> int:
    from seedrun.models.catalog import METHODS, NETWORKS

    print("networks (teachers and students):")
    for entry in NETWORKS:
        print(f"  {entry.name:<18} {entry.role:<8} d={entry.dim:<5} {entry.description}")
    print("self-supervised methods (teacher training and student baselines):")
    for entry in METHODS:
        print(f"  {entry.name:<18} {entry.description}")
    from seedrun.training.strategies import STRATEGIES

    print("distillation strategies:")
    for name, strategy in STRATEGIES.items():
        print(f"  {name:<18} {strategy.description}")
    from seedrun.sweeps.compose import recipe_dirs, recipe_groups

    print(f"recipes ({', then '.join(map(str, recipe_dirs()))}):")
    for group, names in recipe_groups().items():
        print(f"  {group + '/':<18} {' '.join(names)}")
    return 0


class _UsageError(Exception):
    pass


def _usage(message: str) -> _UsageError:
    return _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedrun",
        description="Run SEED self-supervised distillation sweeps locally or on Slurm, record every run "
                    "in a database, and rebuild the paper's tables from it.",
    )
    db_help = ("SQLAlchemy URL of the run database (default: $SEEDRUN_DB or sqlite:///$SEEDRUN_HOME/seedrun.db, "
               "SEEDRUN_HOME defaulting to ./.seedrun)")
    parser.add_argument("--db", help=db_help)
    # --db also after the command (`seedrun status --db URL`), as people type it
    with_db = argparse.ArgumentParser(add_help=False)
    with_db.add_argument("--db", default=argparse.SUPPRESS, help=db_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("sweep", parents=[with_db], help="expand a sweep file into runs and run them (locally) or submit them (Slurm)",
                       description="Check a sweep file, record its runs and run them locally (then print the "
                                   "sweep's table) or submit them to Slurm (and return). Exit 0 when every run "
                                   "completed or was submitted, 1 when a local run failed or was blocked by a "
                                   "failed teacher, 2 on bad input (nothing recorded or started).")
    p.add_argument("file", help="sweep YAML file (see sweeps/)")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. distill.epochs=2")
    p.add_argument("--dry-run", action="store_true", help="check and print the plan (Slurm: the arrays it would "
                                                          "submit); record and start nothing")
    p.add_argument("--all", action="store_true", help="with --dry-run: list every run, however many")
    p.add_argument("--json", action="store_true", help="with --dry-run: the whole plan as JSON")
    p.add_argument("--retry-failed", action="store_true", help="also rerun failed, blocked, cancelled and lost runs")
    p.add_argument("--data-root", help="folder holding the data sets (default: $SEEDRUN_DATA, then system "
                                       "and cache locations)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", parents=[with_db], help="where every run stands: counts per state and a row per run")
    p.add_argument("sweep", nargs="?", help="only this sweep")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-reconcile", action="store_true", help="do not ask Slurm about in-flight jobs")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("table", parents=[with_db], help="rebuild one of the paper's tables from the recorded runs")
    p.add_argument("--ablation", help="table name (see --list)")
    p.add_argument("--format", default="rich", choices=["rich", "markdown", "latex", "csv"])
    p.add_argument("--paper", action="store_true", help="show the paper's published values next to ours")
    p.add_argument("--sweep", help="fill the table from this sweep's runs only")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the table (a curve over the axis or bars)")
    p.add_argument("--protocol", metavar="RECIPE", help="the probe protocol of the linear and transfer columns: "
                                                        "moco (the paper's, default) or compress")
    p.add_argument("--list", action="store_true", help="name the tables")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("sync", parents=[with_db], help="build or repair the database from run folders "
                                                       "(a lost database, a copied runs/, two homes merged)",
                       description="Apply every run folder's record (run.json) to the database: runs it lacks "
                                   "are added, runs whose folder is newer are brought up to date, newer "
                                   "database records are kept and reported. Idempotent; deletes nothing.")
    p.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="run folders or folders of them (default: $SEEDRUN_HOME/runs)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("db", help="the run database itself: `seedrun db upgrade`")
    db_sub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    q = db_sub.add_parser("upgrade", parents=[with_db], help="bring the database's schema to this release's "
                                                             "(also done by the first command that writes)")
    q.set_defaults(func=cmd_db_upgrade)

    p = sub.add_parser("eval", parents=[with_db], help="evaluate finished runs with a protocol (knn, linear, semisup, transfer), no retraining")
    p.add_argument("target", help="a sweep name or a run hash prefix")
    p.add_argument("--protocol", required=True, choices=["knn", "linear", "semisup", "transfer"])
    p.add_argument("--retry-failed", action="store_true", help="rerun evaluations that failed")
    p.add_argument("--data-root", help="folder holding the data sets")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("logs", parents=[with_db], help="a run's state, failure, budget events and logs (every attempt)")
    p.add_argument("run", metavar="RUN", help="run hash or prefix (at least 4 hex digits)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("retry", parents=[with_db], help="resubmit failed runs through the launcher they were recorded with")
    p.add_argument("--failed", action="store_true", help="failed, blocked, cancelled and lost runs")
    p.add_argument("--reason", help="only this failure_reason: out_of_memory, nan_loss, timeout, preempted, "
                                    "node_fail, cancelled, exception, blocked")
    p.add_argument("--sweep", help="only this sweep's runs")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("cancel", parents=[with_db], help="cancel a sweep's unfinished runs or one run (one scancel)")
    p.add_argument("target", metavar="SWEEP|RUN")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("teacher", help="teacher checkpoints: `seedrun teacher inspect PATH`")
    teacher_sub = p.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)
    q = teacher_sub.add_parser("inspect", help="detected format (MoCo-v2, SwAV, SimCLR, torchvision, seedrun), "
                                               "architecture, head shape and whether it loads")
    q.add_argument("path")
    q.set_defaults(func=cmd_teacher_inspect)

    p = sub.add_parser("list", help="the registered networks, methods, strategies and recipes")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from seedrun.errors import InputError

    try:
        return args.func(args)
    except BrokenPipeError:  # `seedrun status | head`: the reader has gone, which is fine
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:  # Ctrl-C: what was done is recorded (a submission records what it queued)
        print("interrupted", file=sys.stderr)
        return 130
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyError as exc:
        from seedrun.tables import UnknownTable

        if isinstance(exc, UnknownTable):
            print(f"error: --ablation: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        raise


if __name__ == "__main__":
    sys.exit(main())
