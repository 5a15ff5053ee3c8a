"""The benchmark tools run end to end (in subprocesses: ab_analysis imports the package twice)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ab_analysis_compares_a_tree_with_itself():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_analysis.py"), str(ROOT),
                          "--models", "resnet18", "--repeats", "2"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    match = re.search(r"resnet18\s+best\s+([\d.]+) ->\s+([\d.]+) ms", out)
    assert match, out
    assert float(match.group(1)) > 0 and float(match.group(2)) > 0


def test_analysis_workload_analyses_fresh_traces_alike():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "analysis_workload.py"),
                          "--model", "resnet18", "--analyses", "2"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    match = re.search(r"resnet18: 2 analyses of fresh traces, (\d+) groups each", out)
    assert match, out
    assert int(match.group(1)) > 0
