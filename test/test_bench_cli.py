"""The benchmark commands run what the nodes run and write the rows the issues name."""
from __future__ import annotations

import json

import pytest

from ood_monitor.cli.main import main as cli


def rows(path) -> dict[str, dict]:
    report = json.loads(path.read_text())
    assert {"cpu", "cores", "python"} <= set(report["machine"])
    return {r["variant"]: r for r in report["rows"]}


def test_bench_preprocess_rows(tmp_path):
    out = tmp_path / "pre.json"
    assert cli(["bench", "preprocess", "--quick", "--json", str(out)]) == 0
    r = rows(out)
    assert {"128px", "256px"} <= set(r)
    assert r["128px"]["frames"] == 40 and 0 < r["128px"]["ms_per_frame"] < r["256px"]["ms_per_frame"] * 5
    assert r["128px"]["ms_per_frame"] == pytest.approx(r["128px"]["decode_ms"] + r["128px"]["resize_flow_ms"], rel=1e-6)


def test_bench_vae_rows_with_the_shipped_models(tmp_path):
    out = tmp_path / "vae.json"
    assert cli(["bench", "vae", "--quick", "--json", str(out)]) == 0
    r = rows(out)
    assert {"pipeline", "deterministic", "mc30"} <= set(r)
    assert all(row["ms_per_frame"] > 0 and row["frames"] == 30 for row in r.values())
    assert r["deterministic"]["x_deterministic"] == pytest.approx(1.0)
