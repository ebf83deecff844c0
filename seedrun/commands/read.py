"""The reading commands: `status`, `table`, `logs`, `list`, `teacher inspect`. They train nothing and
never import torch; each imports what it needs when it runs (`status` and `table` answer within
15x `python -c pass` at 10,000 runs: benchmarks/cli_latency.py).
"""

from __future__ import annotations

from typing import Optional

from seedrun.commands import EXIT_BAD_INPUT, UsageError, database_url, db_exists


def catch_up_first(db_url: str) -> None:
    """The index brought up to date from the folders of the runs it holds in flight (seedrun.store.catchup)."""
    if db_exists(db_url):
        from seedrun.store.catchup import catch_up

        catch_up(db_url)


def cmd_status(args) -> int:
    from seedrun.views.status import show_status

    if getattr(args, "watch", None) is not None:
        from seedrun.views.status import watch

        if args.watch <= 0 or args.json:
            raise UsageError("status: --watch: expected a positive number of seconds, without --json")
        return watch(database_url(args), args.sweep, args.watch)
    from seedrun.job.interpreter import collector_paused

    # 10,000 runs' rows hold no cycles; collections of them cost status about 4 ms, which with 100 newer
    # folders to bring in is the difference between 15.4x and 15x `python -c pass` (benchmarks/cli_latency.py)
    with collector_paused():
        catch_up_first(database_url(args))
        return show_status(database_url(args), args.sweep, as_json=args.json, check_jobs=not args.no_reconcile)


def table_groups(ablation: str, db_url: str, sweep: Optional[str], protocol: Optional[str] = None) -> list:
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


def print_table(ablation: str, db_url: Optional[str], sweep: Optional[str], fmt: str, paper: bool,
                protocol: Optional[str] = None) -> None:
    """The table as `seedrun table` prints it; from no runs at all where there is no database yet."""
    from seedrun.store.protocols import protocol_note
    from seedrun.tables import build_table, render
    from seedrun.tables.terminal import wants_color

    groups = table_groups(ablation, db_url, sweep, protocol) if db_url is not None else []
    data = build_table(ablation, groups, paper=paper, protocol=protocol)
    note = protocol_note({column.metric for column in data.columns}, protocol)
    if note and db_url is not None:
        data.notes.append(note)
    output = render(data, fmt, color=wants_color())
    print(output, end="" if output.endswith("\n") else "\n")


def cmd_table(args) -> int:
    from seedrun.tables import list_tables

    if args.list:
        for name, title in list_tables():
            print(f"{name:<14} {title}")
        return 0
    if not args.ablation:
        raise UsageError("table: give --ablation NAME (see --list)")
    from seedrun.tables import get_table

    get_table(args.ablation)  # an unknown name fails before the database is opened
    from seedrun.store.protocols import LINEAR_RECIPES

    if args.protocol is not None and args.protocol not in LINEAR_RECIPES:
        raise UsageError(f"table: --protocol: expected one of {', '.join(LINEAR_RECIPES)}, got {args.protocol!r}")
    db_url = database_url(args)
    catch_up_first(db_url)
    if args.plot:
        from seedrun.tables import plot_table

        plot_table(args.ablation, table_groups(args.ablation, db_url, args.sweep, args.protocol)
                   if db_exists(db_url) else [],
                   args.plot, protocol=args.protocol)
        print(f"wrote {args.plot}")
    print_table(args.ablation, db_url if db_exists(db_url) else None, args.sweep, args.format, args.paper,
                args.protocol)
    return 0


def cmd_logs(args) -> int:
    from seedrun.views.logs import show_logs

    catch_up_first(database_url(args))  # the run's state and error as its folder says them now
    return show_logs(database_url(args), args.run)


def cmd_teacher_inspect(args) -> int:
    from seedrun.models.teacher_inspect import format_inspection, inspect

    result = inspect(args.path)
    print(format_inspection(result))
    return 0 if result.get("verdict") == "ok" else EXIT_BAD_INPUT


def cmd_list(args) -> int:
    from seedrun.models.catalog import METHODS, NETWORKS

    if getattr(args, "timm", None) is not None:
        from seedrun.models.catalog import timm_names

        names = timm_names(args.timm)
        print("\n".join(names) if names else f"no timm network matches {args.timm!r}")
        return 0 if names else EXIT_BAD_INPUT

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
    print("students (how each is built; `baseline`: its student-alone MoCo-v2 settings over the teacher recipe's):")
    for name in recipe_groups().get("student", []):
        print(f"  {name:<24} {_student_line(recipe_dirs(), name)}")
    return 0


def _student_line(folders, name: str) -> str:
    """What a student recipe says of its network's build and of its student-alone baseline, from its YAML
    (the first folder that has it, as Hydra searches them)."""
    import yaml

    path = next((folder / "student" / f"{name}.yaml" for folder in folders
                 if (folder / "student" / f"{name}.yaml").is_file()), None)
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) if path else None
    except (OSError, yaml.YAMLError) as exc:
        return f"(unreadable: {exc.__class__.__name__})"
    if not isinstance(recipe, dict):
        return "(not a mapping)"
    words = [f"{recipe.get('arch')} width {recipe.get('width')}"]
    words += [f"{key} {recipe[key]}" for key in ("bn", "layout") if key in recipe]
    own = {key: value for key, value in (recipe.get("baseline") or {}).items() if value is not None}
    shown = (f"{key} {str(value).lower() if isinstance(value, bool) else value}" for key, value in own.items())
    words.append("baseline: " + (", ".join(shown) or "the teacher recipe's"))  # as the YAML writes them
    return "; ".join(words)
