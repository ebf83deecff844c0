"""What `seedrun sweep FILE` will do, readable at any size: the `--dry-run` plan and the sweep's header.

The header says how many runs, in which states, and per axis how many values and a few of them (a
2,500-run sweep is not 2,500 values on one line). With the Slurm launcher a dry run also lists the
arrays `seedrun sweep` would submit, as seedrun.launchers.slurm plans them: stage, tasks, `%throttle`,
which array each waits for, partition, nodes x tasks, GPUs and memory a node, CPUs a task and a node, and
time limit; then what each stage asks (teacher pre-training, distillation, evaluation, also those without
runs in this sweep) and whether it fits the partition's nodes (seedrun.launchers.requests: one `sinfo`;
a request that fits no node is one error line and exit 2). `--all` adds a line per run; `--json` prints
the whole plan (arrays with their runs, every run's state, the stages' requests) for scripts.

Neither SQLAlchemy nor torch is imported unless a database exists to read the runs' states from.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from seedrun.launchers.requests import Request
from seedrun.store.states import BLOCKED, CANCELLED, COMPLETED, FAILED, IN_FLIGHT, LOST, PENDING, RETRYABLE
from seedrun.sweeps.launcher_values import tasks_per_node

#: An axis with more values than this shows its count, its first and its last few values.
SHOW_VALUES = 8
#: A dry run lists its runs one per line up to this many (more with --all).
SHOW_RUNS = 20


def grouped_counts(runs, states: dict[str, str]) -> dict[str, int]:
    counts = {"new": 0, "done": 0, "running": 0, "failed": 0}
    for run in runs:
        state = states.get(run.hash, "new")
        key = {"new": "new", PENDING: "new", COMPLETED: "done", FAILED: "failed", BLOCKED: "failed",
               CANCELLED: "failed", LOST: "failed"}.get(state, "running" if state in IN_FLIGHT else "new")
        counts[key] += 1
    return counts


def axis_values(sweep) -> dict[str, list]:
    """Each axis's distinct values, in the file's order (a plan made in code: as its runs have them)."""
    values: dict[str, dict] = {axis: {} for axis in sweep.axes}
    for axis, seen in values.items():
        listed = sweep.axis_values.get(axis)
        for value in listed if listed is not None else [run.axes[axis] for run in sweep.runs if axis in run.axes]:
            seen.setdefault(repr(value), value)
    return {axis: list(seen.values()) for axis, seen in values.items()}


def axis_line(axis: str, values: list) -> str:
    shown = [str(value) for value in values]
    if len(shown) <= SHOW_VALUES:
        return f"  {axis}: {' '.join(shown)}"
    return f"  {axis}: {len(shown)} values: {' '.join(shown[:4])} … {' '.join(shown[-2:])}"


def print_header(console, sweep, states: dict[str, str], stale: int, cost: Optional[str] = None) -> str:
    """The sweep's summary (also before a real run), with what the runs to run will cost (seedrun.launchers.cost)
    when given; returns the launcher's name."""
    stages = {stage: len(sweep.stage(stage)) for stage in ("pretrain", "distill", "eval")}
    launcher = launcher_name(sweep)
    from rich.markup import escape

    console.print(f"sweep [bold]{escape(sweep.name)}[/] ({escape(sweep.path)}): {len(sweep.runs)} runs "
                  f"({stages['pretrain']} pre-training, {stages['distill']} distillation"
                  + (f", {stages['eval']} evaluation" if stages["eval"] else "") + f"), launcher {launcher}",
                  highlight=False, markup=True, soft_wrap=True)
    counts = grouped_counts(sweep.runs, states)
    console.print(f"  new {counts['new']}  done {counts['done']}  running {counts['running']}  failed {counts['failed']}",
                  highlight=False, soft_wrap=True)
    if stale:
        console.print(f"  no longer in the sweep: {stale} run(s) an earlier version of {sweep.path} named; "
                      "recording drops them from the sweep (their results stay in the database)", highlight=False, soft_wrap=True)
    for axis, values in axis_values(sweep).items():
        console.print(axis_line(axis, values), highlight=False, markup=False, soft_wrap=True)
    if cost:
        console.print(f"  {cost}", highlight=False, markup=False, soft_wrap=True)
    for warning in sweep.warnings:
        console.print("  [yellow]warning:[/] ", end="", highlight=False)
        console.print(warning, highlight=False, markup=False, soft_wrap=True)
    return launcher


def launcher_name(sweep) -> str:
    return sweep.launcher.get("name") or (sweep.runs[0].config.get("launcher", {}).get("name", "local")
                                          if sweep.runs else "local")


def _todo(sweep, states: dict[str, str], retry_failed: bool) -> list:
    todo = ("new", PENDING) + (RETRYABLE if retry_failed else ())
    return [run for run in sweep.runs if states.get(run.hash, "new") in todo]


def build_plan(sweep, states: dict[str, str], stale: int = 0, retry_failed: bool = False,
               limit: Optional[int] = None) -> dict[str, Any]:
    """The whole plan as data: what `--json` prints and the text view shows."""
    todo = _todo(sweep, states, retry_failed)
    todo_hashes = {run.hash for run in todo}
    launcher = launcher_name(sweep)
    by_state: dict[str, int] = {}
    for run in sweep.runs:
        state = states.get(run.hash, "new")
        by_state[state] = by_state.get(state, 0) + 1
    plan: dict[str, Any] = {
        "sweep": sweep.name, "path": sweep.path, "launcher": launcher, "runs_total": len(sweep.runs),
        "counts": grouped_counts(sweep.runs, states), "states": by_state, "stale": stale,
        "axes": axis_values(sweep), "warnings": list(sweep.warnings), "to_run": len(todo), "arrays": [], "blocked": [],
        "runs": [{"hash": run.hash, "stage": run.stage, "state": states.get(run.hash, "new"), "axes": run.axes,
                  "depends_on": run.depends_on} for run in sweep.runs],
    }
    if launcher != "slurm" or not todo:
        return plan
    from seedrun.launchers.slurm import plan_arrays

    blocked = []
    submit = []
    for run in todo:
        upstream = run.depends_on
        if upstream and upstream not in todo_hashes and states.get(upstream, "new") not in (COMPLETED,) + IN_FLIGHT:
            blocked.append(run.hash)  # its teacher failed: seedrun sweep marks it blocked, submits nothing
        else:
            submit.append(run)
    if limit is None:
        from seedrun.launchers.cluster import max_array_size

        limit = max_array_size()
    arrays = plan_arrays(submit, limit)
    where: dict[str, int] = {}
    for index, array in enumerate(arrays, 1):
        for run in array.runs:
            where[run.hash] = index
    for index, array in enumerate(arrays, 1):
        launcher_settings = array.launcher
        after = sorted({where[h] for h in array.upstream if h in where})
        in_flight = sorted(h[:12] for h in array.upstream if h not in where and states.get(h) in IN_FLIGHT)
        plan["arrays"].append({
            "array": index, "stage": array.stage, "tasks": len(array.runs),
            "throttle": min(len(array.runs), int(launcher_settings.get("array_parallelism") or 256)),
            "after_arrays": after, "after_runs_in_flight": in_flight,
            "partition": launcher_settings.get("partition"), "account": launcher_settings.get("account"),
            "qos": launcher_settings.get("qos"), "nodes": launcher_settings.get("nodes") or 1,
            "tasks_per_node": tasks_per_node(launcher_settings),
            "gpus_per_node": launcher_settings.get("gpus_per_node") or 0,
            "cpus_per_task": launcher_settings.get("cpus_per_task"), "mem_gb": launcher_settings.get("mem_gb"),
            "timeout_min": int(launcher_settings.get("timeout_min") or 60),
            "runs": [run.hash for run in array.runs],
        })
    plan["blocked"] = blocked
    plan["max_array_size"] = limit
    plan["stages"] = {stage: Request.of(settings).describe() + f", {_time(int(settings.get('timeout_min') or 60))}"
                      for stage, settings in (getattr(sweep, "stage_launchers", None) or {}).items()}
    plan["_arrays"] = arrays  # for the request check; not printed
    return plan


def _time(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    return (f"{days}-" if days else "") + f"{rest // 60:02d}:{rest % 60:02d}:00"


def array_lines(plan: dict[str, Any]) -> list[str]:
    arrays = plan["arrays"]
    lines = [f"Slurm: {len(arrays)} array{'s' * (len(arrays) != 1)} to submit, one sbatch each "
             f"(MaxArraySize {plan.get('max_array_size')}); {plan['to_run']} of {plan['runs_total']} runs to run"]
    header = ("array", "stage", "tasks", "throttle", "after", "partition", "nodes x tasks", "GPUs/node", "CPUs/task",
              "CPUs/node", "memory/node", "time limit")
    rows = [header]
    for array in arrays:
        after = [f"#{i}" for i in array["after_arrays"]] + [f"run {h}" for h in array["after_runs_in_flight"]]
        cpus = array["cpus_per_task"]
        rows.append((f"#{array['array']}", array["stage"], str(array["tasks"]), f"%{array['throttle']}",
                     ",".join(after) or "-", array["partition"] or "(default)",
                     f"{array['nodes']}x{array['tasks_per_node']}", str(array["gpus_per_node"]),
                     str(cpus or "(default)"), str(cpus * array["tasks_per_node"]) if cpus else "(default)",
                     f"{array['mem_gb']:g} GB" if array["mem_gb"] else "(default)", _time(array["timeout_min"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    if plan["blocked"]:
        lines.append(f"  blocked, not submitted: {len(plan['blocked'])} runs whose teacher failed")
    return lines


def stage_lines(plan: dict[str, Any], sweep) -> list[str]:
    """What each stage asks, per task and per node, stages without runs in this sweep included."""
    if not plan.get("stages"):
        return []
    names = {"pretrain": "teacher pre-training", "distill": "distillation", "eval": "evaluation"}
    lines = ["Requests per stage (memory and GPUs a node; CPUs a task and a node):"]
    for stage, text in plan["stages"].items():
        none = "" if sweep.stage(stage) else " (no runs in this sweep)"
        lines.append(f"  {stage:<8} {names[stage]}{none}: {text}")
    return lines


def check_plan(plan: dict[str, Any], sweep) -> list[str]:
    """The arrays' requests against the cluster's nodes: lines to print; InputError when one fits no node."""
    from seedrun.launchers.requests import check_arrays

    fits, skipped = check_arrays(plan.pop("_arrays", []), sweep.path, getattr(sweep, "stage_blocks", {}) or {},
                                 plan.get("max_array_size") or 1001)
    plan["requests_checked"] = not skipped
    if skipped:
        plan["requests_not_checked"] = skipped
        return [f"requests not checked against the cluster: {skipped}"]
    plan["requests_fit"] = fits
    return [f"request {line}" for line in fits]


def show_dry_run(console, sweep, states: dict[str, str], stale: int, retry_failed: bool = False,
                 all_runs: bool = False, as_json: bool = False, db_url: Optional[str] = None) -> int:
    from seedrun.launchers.cost import estimate

    plan = build_plan(sweep, states, stale, retry_failed)
    cost = estimate(db_url, _todo(sweep, states, retry_failed))
    plan["cost"] = {"hours": cost.hours, "priced": cost.priced, "unknown": cost.unknown}
    if as_json:
        if plan["launcher"] == "slurm" and plan["to_run"]:
            check_plan(plan, sweep)
        print(json.dumps(plan, default=str))
        return 0
    print_header(console, sweep, states, stale, cost.text())
    if plan["launcher"] == "slurm":
        lines = array_lines(plan) if plan["to_run"] else ["Slurm: nothing to submit: every run is done or in flight"]
        lines += stage_lines(plan, sweep)
        for line in lines:
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        lines = check_plan(plan, sweep) if plan["to_run"] else []
    else:
        lines = [f"{plan['launcher']}: {plan['to_run']} of {plan['runs_total']} runs to run, one after another on this machine"]
    for line in lines:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    shown = sweep.runs if all_runs or len(sweep.runs) <= SHOW_RUNS else []
    for run in shown:
        console.print(f"  {run.short}  {run.stage:<8}  {states.get(run.hash, 'new'):<9}  "
                      + " ".join(f"{k}={v}" for k, v in run.axes.items()), highlight=False, markup=False, soft_wrap=True)
    more = "" if shown else f" (--all lists the {len(sweep.runs)} runs, --json gives the whole plan)"
    console.print("dry run: nothing recorded, nothing started" + more, highlight=False, markup=False, soft_wrap=True)
    return 0
