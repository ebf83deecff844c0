"""The `seedrun` command: its argument parser and main(). What each command does is in seedrun.commands
(read, launch, database); each imports what it needs when it runs, so that commands that do not train
(`--help`, `status`, `table`, `list`) start in a fraction of a second without torch.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from seedrun.commands import EXIT_BAD_INPUT, UsageError
from seedrun.commands.database import cmd_db_upgrade, cmd_sync
from seedrun.commands.launch import cmd_cancel, cmd_eval, cmd_retry, cmd_sweep
from seedrun.commands.read import cmd_list, cmd_logs, cmd_status, cmd_table, cmd_teacher_inspect


def _table_format(name: str) -> str:
    """A table format's own name for its aliases (seedrun.tables.render.ALIASES: rich, md, tex); imported
    only when `table` parses its --format."""
    from seedrun.tables.render import ALIASES

    return ALIASES.get(name, name)


def _cmd_plot(args) -> int:
    """`seedrun plot`, imported when it runs (matplotlib and the readers stay off the other commands' path)."""
    from seedrun.views.plot import cmd_plot

    return cmd_plot(args)


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
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run, e.g. distill.epochs=2; "
                   "launcher.KEY=V for every stage, launcher.STAGE.KEY=V for one (pretrain, distill, eval)")
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
    p.add_argument("--watch", nargs="?", type=float, const=5.0, metavar="SECONDS",
                   help="redraw every SECONDS (default 5) until no run is pending or in flight, or Ctrl-C")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("table", parents=[with_db], help="rebuild one of the paper's tables from the recorded runs")
    p.add_argument("--ablation", help="table name (see --list)")
    p.add_argument("--format", default="text", choices=["text", "markdown", "latex", "csv"], type=_table_format,
                   help="text (the terminal's grid; default), markdown, latex or csv")
    p.add_argument("--paper", action="store_true", help="show the paper's published values next to ours")
    p.add_argument("--sweep", help="fill the table from this sweep's runs only")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the table (a curve over the axis or bars)")
    p.add_argument("--protocol", metavar="RECIPE", help="the probe protocol of the linear and transfer columns: "
                                                        "moco (the paper's, augmented views; default), cached "
                                                        "(MoCo's hyper-parameters on cached features) or compress; "
                                                        "only moco is compared with the paper (--paper)")
    p.add_argument("--list", action="store_true", help="name the tables")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("plot", parents=[with_db], help="draw a sweep's training curves, one per run, to a PNG")
    p.add_argument("--sweep", required=True, help="the sweep whose runs to draw")
    p.add_argument("--metric", default="loss", help="a metric the runs record each epoch (default: loss; also "
                                                    "images_per_s, data_wait_fraction, epoch_seconds)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the image to write")
    p.set_defaults(func=_cmd_plot)

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
    p.add_argument("--recipe", choices=["moco", "cached", "compress"],
                   help="the linear or transfer probe's recipe, instead of the run's eval.protocols.P.recipe: "
                        "moco (the paper's: augmented views through the frozen backbone), cached (the same "
                        "hyper-parameters on cached features, fast) or compress")
    p.add_argument("--retry-failed", action="store_true", help="rerun evaluations that failed")
    p.add_argument("--data-root", help="folder holding the data sets")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("logs", parents=[with_db], help="a run's state, failure, budget events and logs (every attempt)")
    p.add_argument("run", metavar="RUN", help="run hash or prefix (at least 4 hex digits)")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("retry", parents=[with_db], help="resubmit failed runs through the launcher they were recorded with")
    p.add_argument("--failed", action="store_true", help="failed, blocked, cancelled and lost runs")
    p.add_argument("--reason", help="only this failure_reason: exception, out_of_memory, nan_loss, data_error, "
                                    "timeout, preempted, node_fail, deadline, no_result, vanished, teacher_changed, "
                                    "cancelled, blocked")
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
    p.add_argument("--timm", nargs="?", const="*", metavar="PATTERN",
                   help="timm's networks usable as student.arch / teacher.arch (timm/NAME), those matching PATTERN")
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
    except UsageError as exc:
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
