"""`seedrun plot --sweep NAME [--metric loss] --out FILE.png`: one curve per run of a sweep, over its
epochs, from what the runs recorded (seedrun.views.curves), without TensorBoard and without torch.

Pre-training runs (the teacher, the students alone) and distillation runs get a panel each: their losses
are different objectives on different scales (MoCo-v2's InfoNCE, SEED's cross-entropy), one axis would
flatten one of them. matplotlib is imported when the command runs, with the Agg backend (no display).
"""

from __future__ import annotations

from seedrun.views.curves import Curve, UnknownSweep, load_curves, metric_names

PANELS = (("pretrain", "teacher and students alone (pre-training)"), ("distill", "distillation"))


def plot_curves(curves: list[Curve], metric: str, out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = [(stage, name) for stage, name in PANELS if any(curve.stage == stage for curve in curves)]
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (stage, name) in zip(axes[0], panels):
        for curve in (curve for curve in curves if curve.stage == stage):
            epochs, values = zip(*curve.points)
            ax.plot(epochs, values, marker="o" if len(epochs) < 30 else None, markersize=3, label=curve.label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.5
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def cmd_plot(args) -> int:
    from seedrun.commands import UsageError, database_url, db_exists
    from seedrun.commands.read import catch_up_first

    db_url = database_url(args)
    if not db_exists(db_url):
        raise UsageError(f"plot: no run database at {db_url}: run a sweep first")
    catch_up_first(db_url)  # runs that ended since the last command: their records in the database
    try:
        curves = load_curves(db_url, args.sweep, args.metric)
    except UnknownSweep as exc:
        raise UsageError(f"plot: --sweep: {exc}") from None
    if not curves:
        recorded = metric_names(db_url, args.sweep)
        raise UsageError(f"plot: no run of sweep {args.sweep!r} recorded {args.metric!r} yet"
                         + (f"; recorded: {', '.join(recorded)}" if recorded else ""))
    try:
        plot_curves(curves, args.metric, args.out, f"{args.sweep}: {args.metric} per epoch")
    except (OSError, ValueError) as exc:  # no such folder, no permission, a format matplotlib does not know
        raise UsageError(f"plot: --out {args.out}: {exc}") from None
    print(f"wrote {args.out}: {len(curves)} runs")
    return 0
