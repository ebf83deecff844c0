"""What a reader judges a table's numbers by: the student trained alone, the teacher, the student's
random initialisation and raw pixels, read from the pre-training runs handed in with the table's runs.

A distilled student's accuracy means little alone: 71 is good if the same network trained alone
reaches 67 and the teacher 74, and not if raw pixels give 75. The plot draws these as lines beside the
curve (seedrun.tables.plot). Where each comes from:

    student alone   the baseline run: the table's student trained by MoCo-v2 alone (pretrain.role baseline)
    teacher         the teacher run (pretrain.role teacher) of the teacher the table's runs distil
    random init     `init_<metric>` (e.g. `init_knn_top1`) on the student-alone run: the same network
                    at its initialisation, before any training, evaluated like every run (pre-training
                    records it for every student-alone run; the main table shows it as a row).
    raw pixels      `pixels_knn_top1` on the teacher run (seedrun.training.pretrain records it)

Several experiments can match (a student of another width): as for a cell, the one with the most
completed runs, then the most recently finished, is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Optional

if TYPE_CHECKING:
    from seedrun.store.groups import RunGroup
    from seedrun.tables.definitions import TableDef

STUDENT_ALONE, TEACHER, RANDOM_INIT, RAW_PIXELS = "student alone", "teacher", "random init", "raw pixels"
INIT_PREFIX = "init_"  # random init: the metric's name with this prefix, on the student-alone run
PIXELS = {"knn_top1": "pixels_knn_top1", "knn_top5": "pixels_knn_top5"}  # raw pixels: k-NN only
# the metrics a table reads for its references, besides its columns' (seedrun.tables.build.metric_names)
EXTRA_METRICS = frozenset({*PIXELS.values(), f"{INIT_PREFIX}knn_top1", f"{INIT_PREFIX}knn_top5",
                           f"{INIT_PREFIX}linear_top1"})


@dataclass
class Reference:
    kind: str  # STUDENT_ALONE, TEACHER, RANDOM_INIT or RAW_PIXELS
    label: str  # what a legend says
    metrics: dict[str, tuple[float, ...]] = field(default_factory=dict)  # metric -> one value per seed

    def values(self, metric: str) -> tuple[float, ...]:
        return self.metrics.get(metric, ())


def _completed(groups: Iterable["RunGroup"], **settings) -> list["RunGroup"]:
    """The completed groups with these settings, of the one experiment that has the most such runs."""
    matching = [group for group in groups if group.stage == "pretrain" and group.completed
                and all(group.settings.get(key) == value for key, value in settings.items())]
    if not matching:
        return []
    runs: dict[Optional[str], tuple] = {}
    for group in matching:
        count, latest = runs.get(group.experiment, (0, ""))
        runs[group.experiment] = (count + group.count, max(latest, str(group.latest or "")))
    best = max(runs, key=lambda experiment: runs[experiment])
    return [group for group in matching if group.experiment == best]


def _metrics(groups: list["RunGroup"], rename: Optional[dict[str, str]] = None) -> dict[str, tuple[float, ...]]:
    """{metric: values} over the groups; with `rename`, only the named metrics, under their new names."""
    out: dict[str, list[float]] = {}
    for group in groups:
        for name, values in group.metrics.items():
            if rename is None or name in rename:
                out.setdefault(name if rename is None else rename[name], []).extend(values)
    return {name: tuple(values) for name, values in out.items()}


def _describe(settings: dict) -> str:
    return f"{settings.get('pretrain.method')} {settings.get('pretrain.arch')}, {settings.get('pretrain.epochs')} epochs"


def find_references(table: "TableDef", runs: Iterable["RunGroup"], groups: Iterable["RunGroup"]) -> list[Reference]:
    """The references of a table whose cells hold `runs` (distillation runs), from every group handed in."""
    from seedrun.tables.definitions import student_alone

    groups = list(groups)
    references = []
    student = table.fixed.get("student.arch")
    if student is not None:  # an ablation: one student, so one student-alone line (main: its MoCo-v2 row)
        alone = student_alone(student)
        baseline = _completed(groups, **{key: value for key, value in alone.items() if key != "stage"})
        if baseline:
            label = f"{STUDENT_ALONE} ({_describe(baseline[0].settings)})"
            references.append(Reference(STUDENT_ALONE, label, _metrics(baseline)))
            init = {name: name.removeprefix(INIT_PREFIX) for group in baseline for name in group.metrics
                    if name.startswith(INIT_PREFIX)}
            if init:
                references.append(Reference(RANDOM_INIT, f"{RANDOM_INIT} (the same student, untrained)",
                                            _metrics(baseline, init)))
    teachers = {(group.settings.get("teacher.arch"), group.settings.get("teacher.method"),
                 group.settings.get("teacher.pretrain_epochs")) for group in runs if group.stage == "distill"}
    pixels: dict[str, tuple[float, ...]] = {}
    for arch, method, epochs in sorted(teachers, key=str):
        if arch is None:
            continue
        found = _completed(groups, **{"pretrain.role": "teacher", "pretrain.arch": arch, "pretrain.method": method,
                                      "pretrain.epochs": epochs})
        if found:
            references.append(Reference(TEACHER, f"{TEACHER} ({_describe(found[0].settings)})", _metrics(found)))
            pixels = pixels or _metrics(found, {name: metric for metric, name in PIXELS.items()})
    if pixels:
        references.append(Reference(RAW_PIXELS, f"{RAW_PIXELS}, same k-NN", pixels))
    return references

