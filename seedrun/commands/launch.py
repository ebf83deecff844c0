"""The commands that record runs and run or submit them: `sweep`, `eval`, `retry`, `cancel`. Each imports
what it needs when it runs (torch only in the jobs themselves).
"""

from __future__ import annotations

from seedrun.commands import database_url, db_exists


def cmd_sweep(args) -> int:
    from rich.console import Console

    from seedrun.launchers.plan_view import print_header, show_dry_run
    from seedrun.sweeps.sweep_file import expand

    console = Console()
    sweep = expand(args.file, args.overrides, dry_run=args.dry_run, data_root=args.data_root)
    db_url = database_url(args)
    if args.dry_run and not db_exists(db_url):  # nothing recorded yet: no database to read (nor SQLAlchemy to load)
        return show_dry_run(console, sweep, {}, 0, args.retry_failed, args.all, args.json)
    from seedrun.store.plan import read_plan, record

    plan = read_plan(sweep, db_url)
    if args.dry_run:
        return show_dry_run(console, sweep, plan.states, len(plan.stale), args.retry_failed, args.all, args.json,
                            db_url=db_url)
    from seedrun.launchers.cost import estimate

    todo = plan.to_run(retry_failed=args.retry_failed)
    launcher = print_header(console, sweep, plan.states, len(plan.stale), estimate(db_url, todo).text())

    limit = None
    if launcher == "slurm" and todo:  # a request no node can satisfy: refused before anything is recorded
        from seedrun.launchers.slurm import check_requests

        limit = check_requests(plan, todo, console)
    record(plan, db_url)
    if launcher == "slurm":
        from seedrun.launchers.slurm import submit_slurm

        submit_slurm(plan, todo, db_url, args.data_root, console, checked_limit=limit)
        return 0
    if todo:
        from seedrun.launchers.local import run_local

        outcome = run_local(plan, todo, db_url, args.data_root, console)
        console.print(f"completed {outcome['completed']}  failed {outcome['failed']}  blocked {outcome['blocked']}"
                      + (f"  not started {outcome['not_started']}" if outcome.get("not_started") else ""))
        if outcome.get("not_started"):  # the database is unreachable: no table to read from it now
            return 1
    else:
        outcome = {"failed": 0, "blocked": 0}
        console.print("nothing to run: every run is done or in flight")
    if sweep.ablation:
        from seedrun.commands.read import print_table

        print_table(sweep.ablation, db_url, sweep.name, "text", paper=True)
        _print_references(db_url, sweep.name)
    if outcome["failed"] or outcome["blocked"]:
        console.print("some runs failed: `seedrun status` lists them, `seedrun logs RUN` shows why")
        return 1
    return 0


def _print_references(db_url: str, sweep: str) -> None:
    """The sweep's teachers and baselines, and raw pixels: what a reader judges the table's numbers by.
    Runs that differ only in their seed (the baselines of several seeds) are one line: mean +- std."""
    import statistics

    from seedrun.store.records import load_records

    lines: dict[str, list[float]] = {}
    untrained: dict[str, list[float]] = {}
    pixels: dict[str, float] = {}
    for record in load_records(db_url, sweep=sweep, stage="pretrain"):
        p, top1 = record.config.get("pretrain", {}), record.metrics.get("knn_top1")
        if top1 is None:
            continue
        who = "teacher" if p.get("role", "teacher") == "teacher" else "student alone (baseline)"
        label = f"{who}: {p.get('method')} {p.get('arch')} width {p.get('width')}, {p.get('epochs')} epochs"
        lines.setdefault(label, []).append(top1)
        if "pixels_knn_top1" in record.metrics and who == "teacher":
            pixels[label] = record.metrics["pixels_knn_top1"]
        if "init_knn_top1" in record.metrics:
            untrained.setdefault(label, []).append(record.metrics["init_knn_top1"])

    def spread(values: list[float]) -> str:
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} ({len(values)} seeds)"

    for label, values in lines.items():
        print(f"{label}: k-NN top-1 {spread(values)}")
        if label in untrained:
            print(f"  the same network untrained (random init): k-NN top-1 {spread(untrained[label])}")
        if label in pixels:
            print(f"raw pixels, same k-NN: top-1 {pixels[label]:.1f}")


def cmd_eval(args) -> int:
    """Evaluate finished runs with one protocol, as evaluation runs of their own; nothing retrains."""
    from rich.console import Console

    from seedrun.errors import InputError
    from seedrun.store.plan import add_runs, read_plan
    from seedrun.store.records import load_records
    from seedrun.sweeps.spec import RunSpec
    from seedrun.sweeps.sweep_file import Sweep, evaluation_run

    recipe = getattr(args, "recipe", None)
    if recipe and args.protocol not in ("linear", "transfer"):
        raise InputError("eval", "--recipe", f"expected with --protocol linear or transfer, got --protocol {args.protocol}")
    db_url = database_url(args)
    if not db_exists(db_url):
        raise InputError("eval", "TARGET", f"no runs recorded yet ({db_url})")
    records = [r for r in load_records(db_url) if r.stage in ("pretrain", "distill")]
    chosen = [r for r in records if r.sweep == args.target] or [r for r in records if r.hash.startswith(args.target)]
    if not chosen:
        raise InputError("eval", "TARGET", f"no sweep or run matches {args.target!r}")
    unfinished = [r.hash[:12] for r in chosen if r.state != "completed"]
    chosen = [r for r in chosen if r.state == "completed"]
    by_sweep: dict[str, list] = {}
    for record in chosen:
        trained = RunSpec(record.stage, _probe_settings(record.config, args.protocol, recipe), axes=record.axes)
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
        named = f" ({specs[0].config['settings'].get('recipe')})" if args.protocol in ("linear", "transfer") else ""
        console.print(f"{sweep_name}: {len(specs)} evaluation(s) with {args.protocol}{named}, {len(todo)} to run")
        if not todo:
            continue
        if (specs[0].config.get("launcher") or {}).get("name") == "slurm":
            from seedrun.launchers.slurm import submit_slurm

            submit_slurm(plan, todo, db_url, args.data_root, console)
        else:
            from seedrun.launchers.local import run_local

            run_local(plan, todo, db_url, args.data_root, console)
    return 0


def _probe_settings(config: dict, protocol: str, recipe) -> dict:
    """The trained run's config with the probe settings this evaluation uses: `--recipe` where given, and
    for the linear probe the packaged defaults of settings the run was configured without (a run from
    before the augmented protocol has no crop_scale: its `recipe: moco` now gets the published protocol,
    not the cached-features one its old evaluations ran; seedrun.store.protocols)."""
    protocols = (config.get("eval") or {}).get("protocols") or {}
    if protocol not in protocols or (protocol != "linear" and not recipe):
        return config
    settings = dict(protocols[protocol])
    if protocol == "linear":
        settings = {**_packaged_linear_settings(), **settings}
    if recipe:
        settings["recipe"] = recipe
    return {**config, "eval": {**config["eval"], "protocols": {**protocols, protocol: settings}}}


def _packaged_linear_settings() -> dict:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parent.parent / "recipes" / "eval" / "knn.yaml"
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["protocols"]["linear"])


def cmd_retry(args) -> int:
    from seedrun.launchers.control import retry

    return retry(database_url(args), failed=args.failed, reason=args.reason, sweep=args.sweep)


def cmd_cancel(args) -> int:
    from seedrun.launchers.control import cancel

    return cancel(database_url(args), args.target)
