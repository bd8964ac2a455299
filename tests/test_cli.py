import json
import subprocess
import sys

import pytest

from ctc_live import bench
from ctc_live.cli import COMMAND_MODULES, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMAND_MODULES:
        assert name.replace("_", "-") in out


@pytest.mark.parametrize("name", [m.replace("_", "-") for m in COMMAND_MODULES])
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    assert "usage: ctc-live " + name in capsys.readouterr().out


def test_bench_writes_table_and_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "REGISTRY", {})

    @bench.benchmark("arith", help="adds numbers")
    def arith(options):
        return [
            bench.Figure("sum", 6.0, "units", baseline=3.0, baseline_name="half"),
            bench.Figure("quick", float(options.quick), "flag"),
        ]

    out_file = tmp_path / "b.json"
    assert main(["bench", "arith", "--quick", "--json", str(out_file)]) == 0
    table = capsys.readouterr().out
    assert "arith" in table and "sum" in table and "2.00" in table
    data = json.loads(out_file.read_text())
    figures = data["benchmarks"]["arith"]["figures"]
    assert figures[0] == {
        "name": "sum", "value": 6.0, "unit": "units", "baseline": 3.0,
        "baseline_name": "half", "ratio": 2.0,
    }
    assert figures[1]["value"] == 1.0 and figures[1]["ratio"] is None


def test_unknown_benchmark_is_an_error(capsys, monkeypatch):
    monkeypatch.setattr(bench, "REGISTRY", {})
    assert main(["bench", "nope", "--json", "/dev/null"]) == 2
    assert "unknown benchmark nope" in capsys.readouterr().err


def test_cli_starts_without_heavy_imports():
    # `ctc-live config check` must start in a blink: commands import torch/Qt/MM lazily.
    code = (
        "import sys; from ctc_live.cli import build_parser; build_parser(); "
        "heavy = {'torch', 'PySide6', 'pymmcore_plus', 'cv2'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
