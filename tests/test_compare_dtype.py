"""bench/compare_dtype.py: the float32 / bfloat16 comparison runs both and measures what it says."""

import json

import numpy as np

from bench import compare_dtype


def test_image_distance_by_hand():
    a = np.zeros((2, 2, 3), np.float32)
    b = a.copy()
    b[0, 0, 0] = 0.5  # one of 12 values off by 0.5: MSE 0.25 / 12
    d = compare_dtype.image_distance(a, b)
    assert d["max_abs_diff"] == 0.5 and np.isclose(d["mean_abs_diff"], 0.5 / 12)
    assert np.isclose(d["psnr_db"], 10 * np.log10(12 / 0.25))
    assert compare_dtype.image_distance(a, a)["psnr_db"] == float("inf")


def test_catch_up_finds_the_first_step_at_the_halfway_loss():
    c = compare_dtype.catch_up([10, 8, 6, 5], [11, 9, 7.9, 7], 0.5, 0.25)
    assert c == {"target_loss": 8, "float32_steps": 2, "bfloat16_steps": 3, "float32_s": 1.0, "bfloat16_s": 0.75}
    assert compare_dtype.catch_up([10, 8], [11, 12], None, None)["bfloat16_steps"] is None  # never gets there


def test_both_dtypes_run_and_land_close(random_weights, tmp_path):
    result = compare_dtype.run(32, 3, "locality", weights=random_weights, out=tmp_path)
    assert set(result["runs"]) == {"float32", "bfloat16"}
    for r in result["runs"].values():
        assert r["stopped"] == "completed" and np.isfinite(r["final_loss"]) and r["metrics"]["segments"]
    d = result["distance"]
    assert 0 < d["mean_abs_diff"] and d["psnr_db"] > 25  # rounded differently, the same picture
    saved = json.loads((tmp_path / "compare_dtype.json").read_text())
    assert saved["distance"] == d and (tmp_path / "float32.png").exists() and (tmp_path / "bfloat16.png").exists()
    text = compare_dtype.report(result)
    assert "float32:" in text and "bfloat16:" in text and "PSNR" in text and "reaches it" in text
    assert result["catch_up"]["float32_steps"] == 1
