"""benchmarks/bench_cam_inference.py: the labels it compares (the label tool's threshold_labels) are
the arg-max of the background threshold and the CAMs, and it runs end to end (one rank, a few toy
images)."""

import sys

import numpy as np
from conftest import load_script


def test_labels_are_the_argmax_of_threshold_and_tag_cams():
    from wsss_d2.pseudo.refine import threshold_labels  # what the benchmark compares

    cams = np.array([[[0.9, 0.1], [0.2, 0.5]], [[0.1, 0.8], [0.1, 0.4]]], np.float32)
    labels = threshold_labels(cams, [3, 1], 0.3)
    # class 2 -> label 3, class 0 -> label 1; (1, 0): both below 0.3 -> background
    assert labels.tolist() == [[3, 1], [0, 3]]


def test_benchmark_runs_and_reports_agreement(capsys, monkeypatch):
    bench = load_script("benchmarks/bench_cam_inference.py")
    argv = ["bench", "--dataset", "toyparts_mini_train", "--num-images", "3", "--repeats", "1",
            "--reference", "irn_pairs", "--threads", "1",
            "WSSS.PSEUDO.SCALES", "(1.0, 0.5)", "MODEL.TINY.WIDTHS", "(8, 8, 16, 16)"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench.main()
    out = capsys.readouterr().out
    assert "3 images of toyparts_mini_train" in out and "load average" in out
    agree = float(out.split("agree on ")[1].split(" %")[0])
    assert agree > 99.0  # float16 storage only: the same model, scales and images
