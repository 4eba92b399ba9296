"""wsss_d2.sweep: a study's runs as pipeline stages (run, reuse, collect)."""

from conftest import MINI_TOY_OPTS, REPO, load_script

from wsss_d2.sweep import markdown_table, mean_sd, run_stages, stage_value


def test_sweep_runs_reuses_and_collects(tmp_path):
    opts = MINI_TOY_OPTS + ["SOLVER.MAX_ITER", "2"]
    stages = [
        {"name": f"cam_s{s}", "kind": "train", "config": "configs/cam_toy.yaml",
         "opts": opts + ["SEED", str(s)]}
        for s in (0, 1)
    ] + [
        {"name": "cam_s0_val", "kind": "evaluate", "config": "configs/cam_toy.yaml",
         "weights_from": "cam_s0", "opts": opts + ["SEED", "0"]}
    ]  # fmt: skip
    out = str(tmp_path / "sweep")
    done = run_stages(out, stages, str(REPO))
    assert [done[n]["status"] for n in ("cam_s0", "cam_s1", "cam_s0_val")] == ["ran"] * 3
    v0, v1 = (stage_value(done, f"cam_s{s}", "cam/mIoU") for s in (0, 1))
    assert 0 <= v0 <= 100 and 0 <= v1 <= 100
    # the held-out evaluation scores the trained model: same split, same number
    assert stage_value(done, "cam_s0_val", "cam/mIoU") == v0
    again = run_stages(out, stages, str(REPO))
    assert {s["status"] for s in again.values()} == {"skipped"}
    collected = run_stages(out, stages[:1] + [{**stages[1], "name": "not_run"}], str(REPO), True)
    assert list(collected) == ["cam_s0"] and stage_value(collected, "not_run", "cam/mIoU") is None
    assert mean_sd([1.0, 3.0]) == "2.00 ± 1.41" and mean_sd([]) == "-"
    assert markdown_table(["a", "b"], [[1, 2]]).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| 1 | 2 |",
    ]


def test_study_scripts_build_their_stages():
    cian = load_script("projects/CIAN/toy_ablation.py")
    args = cian.argparse.Namespace(
        round1="", seeds=[0, 1], variants=["baseline", "cian"], no_retrain=False,
        retrain_from=["cian"], opts=[],
    )  # fmt: skip
    names = [s["name"] for s in cian.stages_of(args)]
    assert names == [
        "cam_toy", "round1", "baseline_s0", "cian_s0", "baseline_s1", "cian_s1",
        "round2_s0", "retrain_s0", "round2_s1", "retrain_s1",
    ]  # fmt: skip
    retrain = next(s for s in cian.stages_of(args) if s["name"] == "retrain_s1")
    assert retrain["weights_from"] == "cian_s1" and retrain["round_from"] == "round2_s1"
