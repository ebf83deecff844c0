"""`seedrun list --timm [PATTERN]`: timm's networks by the names student.arch takes, without torch."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_list_timm_prints_the_names_student_arch_takes_and_imports_no_torch(cli):
    out = cli("list", "--timm", "mobilenetv4_conv_s*").stdout.split()
    assert "timm/mobilenetv4_conv_small" in out and all(name.startswith("timm/mobilenetv4_conv_s") for name in out)
    assert cli("list", "--timm", "no_such_net*", check=False).returncode == 2
    probe = ("import json, sys; from seedrun.cli import main; main(['list', '--timm', 'resnet10t']); "
             "print(json.dumps('torch' in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=cli.env, capture_output=True, text=True)
    assert result.stdout.split() == ["timm/resnet10t"] and json.loads(result.stderr.strip().splitlines()[-1]) is False
