"""``streamrank eval`` on a small structured dataset (real model, real cache)."""

import json

import pytest

from streamrank.evaluate import METHODS, SLICES, run_eval, table
from tests.conftest import isolated_settings
from tests.synthetic import write_dataset

pytestmark = pytest.mark.model


def test_eval_reports_all_methods_and_learns_the_structure(tmp_path):
    data = write_dataset(tmp_path / "ml")
    settings = isolated_settings("unused:9092", tmp_path)
    result = run_eval(settings, str(data), out_dir=str(tmp_path / "out"), progress=False)
    assert set(result["methods"]) == set(METHODS)
    assert result["events"] == 240 and result["evaluated"] > 100
    for m in result["methods"].values():
        for key in ("hr@10", "ndcg@10", "mrr@10", "coverage", "ild"):
            assert 0.0 <= m[key] <= 1.0
        assert m["ndcg@10"] <= m["hr@10"] and m["mrr@10"] <= m["ndcg@10"]
    sr, pop = result["methods"]["streamrank"], result["methods"]["popularity"]
    # Users stick to one genre: the personalised model must beat global popularity.
    assert sr["hr@10"] > pop["hr@10"]
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["methods"] == result["methods"] and saved["curve"]["streamrank"]
    # Slices: every method per slice; "all" is the whole; the cold slices are parts of it.
    sl = saved["slices"]
    assert sl["thresholds"]["cold_items"] == 5 and sl["all"]["evaluated"] == result["evaluated"]
    assert 0 < sl["cold_items"]["evaluated"] < sl["all"]["evaluated"]
    assert 0 < sl["cold_users"]["evaluated"] < sl["all"]["evaluated"]
    for name in SLICES:
        for m in METHODS:
            assert 0.0 <= sl[name][m]["ndcg@10"] <= sl[name][m]["hr@10"] <= 1.0
    assert sl["all"]["streamrank"]["hr@10"] == result["methods"]["streamrank"]["hr@10"]
    # The genres are in the titles: the content signal must matter to the full model.
    assert (result["methods"]["streamrank"]["hr@10"]
            > result["methods"]["streamrank-no-content"]["hr@10"])
    assert "| streamrank-no-content |" in table(result)
    png = (tmp_path / "out" / "eval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
