"""The random-initialisation reference: a student-alone (baseline) run also records the k-NN of the same
network untrained (`init_knn_top1`), so a reader sees whether training helped; the table plot draws it."""

from __future__ import annotations

import json

from conftest import TINY_SWEEP_BASE, write_sweep


def test_a_baseline_records_its_untrained_networks_knn_and_the_plot_draws_it(cli, tmp_path):
    path = write_sweep(tmp_path / "init.yaml", "name: init\nablation: temperature\n" + TINY_SWEEP_BASE
                       + "  teacher.width: 8\n  teacher.pretrain.epochs: 1\n  student.width: 8\n"
                       + "  distill.epochs: 1\n  distill.warmup_epochs: 0\n  threads: 1\n"
                       + "  +student.baseline.head: bn_mlp\n"  # the student's own baseline setting: a BN head
                       + "grid:\n  distill.tau_teacher: [0.01]\nbaselines: true\nlauncher: {name: local}\n")
    assert "completed 3  failed 0" in cli("sweep", str(path)).stdout
    runs = json.loads(cli("status", "--json").stdout)["runs"]
    baseline = next(run for run in runs if run["stage"] == "pretrain" and "init_knn_top1" in run["metrics"])
    teacher = next(run for run in runs if run["stage"] == "pretrain" and run is not baseline)
    assert 0 < baseline["metrics"]["init_knn_top1"] <= 100 and "init_knn_top1" not in teacher["metrics"]
    assert baseline["metrics"]["init_knn_top1"] != baseline["metrics"]["knn_top1"]  # trained is another network
    import torch

    model = torch.load(cli.home / "runs" / baseline["hash"][:16] / "model.pt", weights_only=True)
    # the baseline's projection head has its BatchNorm (student.baseline.head: bn_mlp)
    assert "1.running_mean" in model["head"], sorted(model["head"])

    from seedrun.tables import build_table
    from seedrun.commands.read import table_groups

    data = build_table("temperature", table_groups("temperature", f"sqlite:///{cli.db}", "init"), paper=True)
    labels = [reference.label for reference in data.references]
    assert any("untrained" in label for label in labels), labels
