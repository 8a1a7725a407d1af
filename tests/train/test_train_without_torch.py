"""conveyor.train imports and plans without torch; torch-backed parts say how to install it."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_pure_parts_work_without_torch_and_the_rest_says_how_to_install():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None  # import torch now raises ImportError
        import conveyor.train as t
        s = t.one_f_one_b(2, 4)
        t.validate(s)
        print(t.simulate(s, t.StageCosts.uniform(2, 1, 2)).makespan)
        print(t.partition_optimal([1, 2, 3], 2).bounds)
        # a saved profile loads and plans, baselines and all, without torch
        import json
        layer = t.LayerProfile("0:Linear", *[1e-3] * 6, 1, 4, 8, 8, 8)
        prof = t.ModelProfile((layer,) * 4, 8)
        loaded = t.ModelProfile.from_dict(json.loads(json.dumps(prof.to_dict())))
        print(loaded == prof, t.plan(loaded, 2, 8).baselines[0].name)
        assert "torch" not in {k for k, v in sys.modules.items() if v is not None}
        try:
            t.profile_model(None, None)
        except t.MissingTorchError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "15",
        "(0, 2, 3)",
        "True one process",
        "conveyor.train needs PyTorch: pip install torch==2.13.0 && pip install 'conveyor[train]'",
    ]


def test_cli_without_torch_says_how_to_install():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["torch"] = None
        from click.testing import CliRunner
        from conveyor.train.cli import train
        result = CliRunner().invoke(train, ["model.py:make_model", "--stages", "2"])
        print(result.exit_code)
        print(result.output.strip())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "1",
        "Error: conveyor.train needs PyTorch: pip install torch==2.13.0 && pip install 'conveyor[train]'",
    ]
