"""The leaderboard: method table, common loss, split, claims against the papers, a smoke run, and the
chapter contract."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from chapter_contract import ChapterContract
from npcrepro.chapters.leaderboard import methods as M
from npcrepro.chapters.leaderboard import prepare as prep
from npcrepro.chapters.leaderboard import report as L
from npcrepro.chapters.leaderboard import tracks
from npcrepro.engine.results import Results
from npcrepro.errors import DataError, ParameterError
from npcrepro.profiles import resolve


class TestLeaderboardContract(ChapterContract):
    chapter = "leaderboard"
    overrides = {"methods": ["fcn8_ct", "cscn"], "workers": 1}
    kill_at = 2


def test_every_paper_has_a_method_and_every_method_a_baseline():
    assert {m.paper for m in M.METHODS} == {"baseline", "li2018", "xue2020", "luo2020", "guo2021", "chen2020"}
    for m in M.METHODS:
        base = M.BY_KEY[m.baseline]
        assert base.paper == "baseline" and base.channels[-1:] == m.channels[-1:] or m.key == "mmfnet"
        assert base.ct == m.ct


def test_select_methods_adds_baselines_and_rejects_unknown_keys():
    keys = [m.key for m in M.select(["deeplab_ct"])]
    assert keys == ["unet_ct", "deeplab_ct"]
    assert all(m.ct for m in M.select("all", ct_only=True))
    with pytest.raises(ParameterError, match="unknown leaderboard method"):
        M.select(["nnunet"])


def test_cscn_runs_after_bunet():
    keys = [m.key for m in M.select(["cscn"])]
    assert keys == ["unet_cet1", "bunet", "cscn"]
    assert M.BY_KEY["cscn"].after == ("bunet",)


@pytest.mark.parametrize("m", M.METHODS, ids=lambda m: m.key)
def test_networks_map_input_to_one_tumour_output(m, one_torch_thread):
    n_in = len(m.channels) + (1 if m.key == "cscn" else 0)
    net = M.network(m, 0.25, "smoke").eval()
    shape = (2, n_in, 64, 64) if m.dims == "2d" else (1, n_in, 8, 32, 32)
    with torch.no_grad():
        y = net(torch.zeros(shape))
    y = y[0] if isinstance(y, (list, tuple)) else y
    assert y.shape[2:] == shape[2:]
    assert y.shape[1] == (2 if m.activation == "softmax" else 1)


def test_common_loss_hand_computed():
    # one sample, sigmoid logit 0 everywhere (p = 0.5), target 2 of 4 pixels
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[[1, 1], [0, 0]]]])
    bce = float(np.log(2))
    dice = 1 - (2 * 1.0 + 1) / (2.0 + 2.0 + 1)  # sum p*t = 1, sum p = 2, sum t = 2
    assert float(prep.CommonLoss()(logits, target)) == pytest.approx(bce + dice, rel=1e-6)
    # softmax with equal logits gives the same probabilities and cross-entropy
    assert float(prep.CommonLoss()(torch.zeros(1, 2, 2, 2), target)) == pytest.approx(bce + dice, rel=1e-6)
    # deep supervision: the mean over outputs
    big = torch.full((1, 1, 2, 2), 20.0) * (2 * target - 1)
    both = float(prep.CommonLoss()((logits, big), target))
    assert both == pytest.approx((bce + dice + float(prep.CommonLoss()(big, target))) / 2, rel=1e-6)
    assert float(prep.CommonLoss()(big, target)) < 0.01  # a confident perfect prediction costs ~0
    with pytest.raises(DataError, match="1 or 2 output channels"):
        prep.CommonLoss()(torch.zeros(1, 3, 2, 2), target)


def test_common_loss_on_a_coarser_output_uses_the_area_averaged_target():
    # a 1 x 1 output against a 2 x 2 target of which half is tumour: soft target 0.5
    logit = torch.full((1, 1, 1, 1), 0.7)
    target = torch.tensor([[[[1, 1], [0, 0]]]])
    p = torch.sigmoid(logit).item()
    bce = -(0.5 * np.log(p) + 0.5 * np.log(1 - p))
    dice = 1 - (2 * p * 0.5 + 1) / (p + 0.5 + 1)
    assert float(prep.CommonLoss()(logit, target)) == pytest.approx(bce + dice, rel=1e-6)
    # the two-channel (softmax) form with the same foreground probability gives the same value
    two = torch.cat([torch.zeros(1, 1, 1, 1), logit], 1)
    assert float(prep.CommonLoss()(two, target)) == pytest.approx(bce + dice, rel=1e-6)
    # 3D too, and a deep-supervision list mixing grids
    t3 = torch.zeros(1, 1, 2, 4, 4)
    t3[..., :2, :2] = 1
    full = torch.where(t3 > 0, 20.0, -20.0)
    assert float(prep.CommonLoss()([full, torch.full((1, 1, 1, 2, 2), 0.0)], t3)) > float(prep.CommonLoss()(full, t3))


def test_li2018_is_deeply_supervised_on_its_three_score_maps(one_torch_thread):
    net = M.network(M.BY_KEY["li2018_cnn"], 0.25, "smoke")
    x = torch.zeros(2, 1, 64, 64)
    maps = net.train()(x)
    assert [tuple(m.shape[2:]) for m in maps] == [(64, 64), (32, 32), (16, 16)]
    with torch.no_grad():
        assert tuple(net.eval()(x).shape) == (2, 1, 64, 64)
    assert M.BY_KEY["li2018_cnn"].score_maps == ("score144", "score72", "score36")


def test_normaliser_windows_ct_and_leaves_the_coarse_channel():
    norm = prep.normaliser(["CT", "coarse", "T1"])
    assert norm["coarse"] is None and norm["T1"] == "zscore"
    np.testing.assert_allclose(norm["CT"](np.array([-1000.0, -200.0, 50.0, 300.0, 3000.0])),
                               [0.0, 0.0, 0.5, 1.0, 1.0])


def test_2d_networks_are_tested_on_windows_of_their_training_crop():
    """A 2D network trained on ``crop_2d`` crops predicts each slice in windows of that size (a
    network that sees its whole input, like image pooling, gets what it saw in training); a crop the
    size of the slice is the whole slice."""
    from npcrepro.datasets import Case

    class ImageMean(torch.nn.Module):  # every pixel's logit is its input's mean
        def forward(self, x):
            return x.mean(dim=(1, 2, 3), keepdim=True).expand(-1, 1, *x.shape[2:])

    ct = np.full((2, 8, 16), -1000.0, np.float32)
    ct[..., 8:] = 300.0  # windowed to 0 and 1
    case = Case("c", {"CT": ct}, {}, (3.0, 1.0, 1.0))
    P = resolve("leaderboard", "smoke", crop_2d=[8, 8], overlap=0.0, ct_channel="CT")
    prob = M.CHAPTER._probability(ImageMean(), M.BY_KEY["unet_ct"], case, P, "cpu")
    np.testing.assert_allclose(prob[..., :8], 0.5, rtol=1e-6)
    np.testing.assert_allclose(prob[..., 8:], 1 / (1 + np.exp(-1.0)), rtol=1e-6)
    whole = M.CHAPTER._probability(ImageMean(), M.BY_KEY["unet_ct"], case, P.replace(crop_2d=[8, 16]), "cpu")
    np.testing.assert_allclose(whole, 1 / (1 + np.exp(-0.5)), rtol=1e-6)


def test_ct_methods_read_the_runs_ct_channel():
    """``ct_channel`` swaps the CT methods' input (and only theirs) for the contrast-enhanced CT,
    which is windowed like CT; a bad value is a one-line parameter error."""
    from npcrepro.errors import ParameterError

    P = resolve("leaderboard", "smoke", ct_channel="CECT")
    assert M.channels_of(M.BY_KEY["deeplab_ct"], P) == ("CECT",)
    assert M.channels_of(M.BY_KEY["mmfnet"], P) == ("T1", "T2", "CET1")
    assert M.channels_of(M.BY_KEY["deeplab_ct"], P.replace(ct_channel="CT")) == ("CT",)
    assert set(M.CHAPTER.channels_for(P)) == {"CECT", "T1", "T2", "CET1"}
    assert set(L.method_table(P).query("key == 'unet_ct'")["input"]) == {"CECT"}
    norm = prep.normaliser(["CECT"])
    np.testing.assert_allclose(norm["CECT"](np.array([-1000.0, 50.0, 3000.0])), [0.0, 0.5, 1.0])
    with pytest.raises(ParameterError, match="ct_channel"):
        resolve("leaderboard", "smoke", ct_channel="MR")


def test_common_schedule_warms_up_decays_and_restarts_on_request():
    from npcrepro.chapters.leaderboard.methods import schedule
    from npcrepro.engine.schedules import make_schedule

    P = resolve("leaderboard", "cpu")
    assert P.cycles == 2  # the cpu profile restarts at the middle of the budget
    one = make_schedule(schedule(P.replace(cycles=1), 640))
    cosine = lambda t, n: 0.5 * (1 + math.cos(math.pi * t / n))  # noqa: E731
    assert one.factor_at(0, 0) == pytest.approx(1 / 64) and one.factor_at(63, 0) == pytest.approx(cosine(63, 640))
    assert one.factor_at(320, 0) == pytest.approx(0.5) and one.factor_at(640, 0) == pytest.approx(0.0)
    two = make_schedule(schedule(P.replace(cycles=2), 640))  # warm restarts: each half a whole schedule
    assert [two.factor_at(t, 0) for t in (0, 100, 319)] == pytest.approx([two.factor_at(t, 0) for t in (320, 420, 639)])
    assert two.factor_at(319, 0) < 1e-3 and two.factor_at(320, 0) == pytest.approx(1 / 32)
    assert schedule(P.replace(schedule="constant", warmup=0.0), 640) is None


def test_schedule_text_names_the_profiles_peak_warmup_and_cycles():
    from npcrepro.chapters.leaderboard.methods import schedule_text

    cpu, gpu = resolve("leaderboard", "cpu"), resolve("leaderboard", "gpu")
    assert schedule_text(cpu).startswith("Adam at a peak learning rate of 0.005, a linear warm-up over the first "
                                         "10% of each cycle and a cosine decay")
    assert "2 cycles over the budget (warm restarts: the network scored at half its budget has finished" in \
        schedule_text(cpu)
    assert "cycle" not in schedule_text(gpu) and "0.002" in schedule_text(gpu)
    assert schedule_text(gpu.replace(schedule="constant", warmup=0.0)) == "Adam at a peak learning rate of 0.002"


def test_holdout_is_seeded_disjoint_and_checked():
    names = [f"c{i}" for i in range(8)]

    def split(seed, n_test=3):
        f = M.CHAPTER.folds(names, {"seed": seed, "n_test": n_test})[0]
        return f.train, f.test

    tr, te = split(1)
    assert len(te) == 3 and not set(tr) & set(te) and sorted(tr + te) == names
    assert split(1) == (tr, te)
    assert split(2) != (tr, te)
    with pytest.raises(ParameterError, match="n_test must be between 1 and 7"):
        split(0, 10)


def test_reported_numbers_of_the_claims_come_from_the_transcription():
    assert L._reported_dsc("xue2020", ("Sec. 2", "DeepLabv3+")) == 0.76
    assert L._reported_dsc("xue2020", L.CLAIM_REPORTED[("xue2020", "unet_ct")]) == 0.73
    assert L._reported_dsc("luo2020", ("Table 1", "FCN-8")) == pytest.approx(0.6808)
    assert L._reported_dsc("guo2021", ("Table 1", "CSCN")) == pytest.approx(0.741)
    assert L._reported_dsc("chen2020", ("Table II", "MMFNet+multi-MLP+stdPool")) == pytest.approx(0.7189)
    assert L._reported_dsc("chen2020", ("Table I", "3D U-net (CET1)")) == pytest.approx(0.6222)
    for paper, _, better, worse in L.CLAIMS:
        assert M.BY_KEY[better].paper == paper


def _fake_track(values: dict[str, list[float]]) -> Results:
    rows = [{"method": k, "fold": 0, "seed": 0, "case": f"c{i}", "structure": "GTVp", "dice": v,
             "hd95": 10 * (1 - v), "assd": 2 * (1 - v), "nsd": v, "pred_empty": False, "ref_empty": False}
            for k, vs in values.items() for i, v in enumerate(vs)]
    training = pd.DataFrame([{"method": k, "fold": 0, "seed": 0, "parameters": 1000, "iterations": 1,
                              "status": "trained", "final_loss": 0.1, "train_seconds": 1.0, "job_seconds": 2.0}
                             for k in values])
    info = {"chapter": "leaderboard", "status": "done", "methods": [{"name": k} for k in values], "folds": 1,
            "seeds": [0], "structures": ["GTVp"], "data_label": "phantom"}
    res = Results(None, info, {"profile": "cpu"}, pd.DataFrame(rows), training)
    from npcrepro.datasets.splits import Fold

    res._splits = [Fold([], [], [f"c{i}" for i in range(len(next(iter(values.values()))))])]
    return res


def test_the_raters_ceiling_is_a_row_of_the_leaderboard_sorted_among_the_networks(tmp_path):
    track = _fake_track({"unet_ct": [0.6, 0.62, 0.64], "deeplab_ct": [0.8, 0.82, 0.84]})
    assert L.CEILING_LABEL not in set(L.leaderboard_table(track, n_boot=100)["method"])  # no raters: no row
    pd.DataFrame({"case": ["c0", "c1", "c2"], "structure": "GTVp", "raters": 3, "pairwise_dice": [0.7, 0.72, 0.74],
                  "rater_vs_reference": 0.85}).to_csv(tmp_path / "raters.csv", index=False)
    track.path = tmp_path
    board = L.leaderboard_table(track, n_boot=100)
    assert list(board["method"]) == ["DeepLabv3+ (xue2020)", L.CEILING_LABEL, "U-Net (CT)"]
    row = board.set_index("method").loc[L.CEILING_LABEL]
    assert row["DSC"].startswith("0.720 [") and row["failed patients"] == "—"


def test_claims_verdicts_and_leaderboard_order():
    n = 8
    good = list(np.linspace(0.7, 0.8, n))
    jitter = [0.01 * (-1) ** i for i in range(n)]  # zero-mean: paired differences not all equal
    track = _fake_track({"unet_ct": [g - 0.1 + j for g, j in zip(good, jitter)], "deeplab_ct": good,
                         "luo_ours_ct": [g - 0.2 for g in good]})
    claims = L.claims_table(track).set_index("claim")
    assert claims.loc["DeepLabv3+ (xue2020) > U-Net (CT)", "verdict"] == "holds"
    assert claims.loc["DeepLabv3+ (xue2020) > U-Net (CT)", "reported Δ"] == "+0.030"
    assert claims.loc["Two-stage U-Net + MSP (luo2020) > U-Net (CT)", "verdict"] == "reversed"
    board = L.leaderboard_table(track, n_boot=200)
    assert list(board["method"]) == ["DeepLabv3+ (xue2020)", "U-Net (CT)", "Two-stage U-Net + MSP (luo2020)"]
    assert board.loc[0, "Δ DSC vs U-Net [95% CI]"].startswith("0.100 [")
    assert board.loc[0, "failed patients"] == 0
    assert "1 method(s) were better, 1 worse" in L.reading(track)


def test_a_claim_says_which_of_its_networks_is_still_learning():
    n = 8
    good = list(np.linspace(0.7, 0.8, n))
    jitter = [0.01 * (-1) ** i for i in range(n)]
    track = _fake_track({"unet_ct": [g - 0.1 + j for g, j in zip(good, jitter)], "deeplab_ct": good,
                         "luo_ours_ct": [g - 0.2 for g in good]})
    assert set(L.claims_table(track)["trained out?"]) == {"not checked (no half-budget scores)"}
    # at half its budget DeepLabv3+ scored 0.08-0.12 lower on every patient; the others 0-0.01
    gain = {"deeplab_ct": [0.1 + 0.02 * (-1) ** i for i in range(n)],
            "unet_ct": [0.01 * (i % 2) for i in range(n)], "luo_ours_ct": [0.005] * n}
    half = track.metrics.copy()
    for k, g in gain.items():
        half.loc[half["method"] == k, "dice"] -= g
    track.metrics_half = half
    claims = L.claims_table(track).set_index("claim")
    assert claims.loc["DeepLabv3+ (xue2020) > U-Net (CT)", "trained out?"] == "DeepLabv3+ (xue2020): still learning"
    assert claims.loc["Two-stage U-Net + MSP (luo2020) > U-Net (CT)", "trained out?"] == "both converged"
    assert claims.loc["DeepLabv3+ (xue2020) > U-Net (CT)", "verdict"] == "holds"  # the verdict itself is kept
    assert "1 of these verdicts involves a network still learning at this budget (DeepLabv3+ (xue2020)" in \
        L.reading(track)


def test_claims_p_values_are_holm_adjusted_over_the_claims_tested():
    from npcrepro.evaluation import holm, paired_tests

    n = 8
    good = list(np.linspace(0.7, 0.8, n))
    jitter = [0.01 * (-1) ** i for i in range(n)]
    values = {"unet_ct": [g - 0.1 + j for g, j in zip(good, jitter)], "deeplab_ct": good,
              "luo_ours_ct": [g + 0.002 * (-1) ** i for i, g in enumerate(good)], "fcn8_ct": good[::-1]}
    track = _fake_track(values)
    claims = L.claims_table(track)
    raw = [float(paired_tests(track.metrics, b, w, ["dice"]).iloc[0]["p_wilcoxon"])
           for b, w in (("deeplab_ct", "unet_ct"), ("luo_ours_ct", "unet_ct"), ("luo_ours_ct", "fcn8_ct"))]
    assert [float(x) for x in claims["p (Wilcoxon)"]] == pytest.approx(raw, rel=1e-2)
    assert [float(x) for x in claims["p (Holm)"]] == pytest.approx(list(holm(raw)), rel=1e-2)
    assert all(c.count("[") == 1 for c in claims["common Δ [95% CI]"])


@pytest.mark.slow
def test_smoke_run_writes_predictions_and_scores_every_test_patient(tmp_path, one_torch_thread):
    P = resolve("leaderboard", "smoke", out_dir=str(tmp_path), methods=["fcn8_ct", "guo_cnn"], workers=1)
    res = tracks.phantom_run(P, progress=False)
    keys = {"fcn8_ct", "unet_ct", "guo_cnn", "unet_cet1"}
    assert set(res.metrics["method"]) == keys
    test = res.test_cases()
    assert len(res.metrics) == len(keys) * len(test) == len(keys) * P.n_test
    for case in test:
        for k in keys:
            assert res.prediction_path(k, case).exists()
    assert res.done and set(L.METRICS) <= set(res.metrics.columns)
    assert np.all((res.metrics["dice"] >= 0) & (res.metrics["dice"] <= 1))
    board = L.leaderboard_table(res, n_boot=100)
    assert len(board) == len(keys) + 1 and L.CEILING_LABEL in set(board["method"])  # the phantom has raters
    assert sorted(res.raters["case"]) == sorted(test) and res.ceiling() == pytest.approx(
        res.raters["pairwise_dice"].mean())


def test_the_3d_networks_train_the_end_of_each_cycle_with_fixed_statistics(tmp_path, monkeypatch,
                                                                        one_torch_thread):
    import npcrepro.engine as engine

    given = {}

    class Recording(engine.Trainer):
        def __init__(self, *args, **kwargs):
            given[kwargs["desc"].split()[0]] = kwargs.get("bn_fixed")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(engine, "Trainer", Recording)
    P = resolve("leaderboard", "smoke", out_dir=str(tmp_path), methods=["guo_cnn"], workers=1)
    tracks.phantom_run(P, progress=False)
    assert given == {"unet_cet1": 0.0, "guo_cnn": P.bn_fixed_3d} and P.bn_fixed_3d > 0
    with pytest.raises(ParameterError, match="ema and bn_fixed_3d"):
        M.CHAPTER.methods(P.replace(ema=0.99))
    assert M.CHAPTER.methods(P.replace(ema=0.99, bn_fixed_3d=0.0))
    with pytest.raises(ParameterError, match="bn_fixed_3d needs bn_batches"):  # before any job starts
        M.CHAPTER.methods(P.replace(bn_batches=0))


@pytest.mark.slow
def test_a_job_gives_the_same_numbers_whatever_ran_before_it(tmp_path, one_torch_thread):
    """Pool workers run several jobs: initial weights must not depend on the jobs before."""
    from npcrepro import chapters

    P = resolve("leaderboard", "smoke", out_dir=str(tmp_path), methods=["guo_cnn"], workers=1)
    first = chapters.run(P, name="a", progress=False).metrics
    torch.rand(100)  # disturb the global RNG, as another job would
    chapters.run(P.replace(methods=["fcn8_ct"]), name="b", progress=False)
    again = chapters.run(P, name="c", progress=False).metrics
    pd.testing.assert_frame_equal(first.drop(columns="seconds"), again.drop(columns="seconds"))


def test_openkbp_track_is_off_by_default_at_the_cpu_profile(tmp_path):
    P = resolve("leaderboard", "cpu", out_dir=str(tmp_path))
    track, why = tracks.openkbp_run(P, progress=False)
    assert track is None and "real_cases = 0" in why and "-p real_cases" in why


@pytest.mark.slow
@pytest.mark.realdata
def test_openkbp_track_trains_the_ct_methods_on_ptv70(openkbp_dir, tmp_path, one_torch_thread):
    P = resolve("leaderboard", "smoke", out_dir=str(tmp_path), real_cases=3, workers=1,
                methods=["deeplab_ct", "guo_cnn"])
    res, why = tracks.openkbp_run(P, progress=False)
    assert res is not None, why
    assert why == "3 OpenKBP training patients" and res.structures == ["PTV70"]
    assert set(res.metrics["method"]) == {"unet_ct", "deeplab_ct"}  # CT methods only
    assert len(res.test_cases()) == 1 and len(res.metrics) == 2
    assert res.prediction_path("deeplab_ct", res.test_cases()[0], "PTV70").exists()
    assert np.all((res.metrics["dice"] >= 0) & (res.metrics["dice"] <= 1))
    # with real_test, scored on OpenKBP's held-out test patients (test-pats), trained on all 3
    held, why = tracks.openkbp_run(P.replace(real_test=2, methods=["deeplab_ct"]), progress=False)
    assert why == "3 OpenKBP training patients, 2 held-out test patients", why
    assert held.held_out == 2 and set(held.metrics["case"]) == set(held.test_cases())
    assert not set(held.test_cases()) & {"pt_1", "pt_2", "pt_12"}


def test_a_claim_against_a_method_that_predicted_nothing_is_not_tested():
    n = 8
    good = list(np.linspace(0.7, 0.8, n))
    track = _fake_track({"unet_ct": good, "luo_ours_ct": [g - 0.1 for g in good], "fcn8_ct": [0.0] * n})
    track.metrics.loc[track.metrics["method"] == "fcn8_ct", "pred_empty"] = True
    assert L.silent_methods(track) == {"fcn8_ct"}
    claims = L.claims_table(track).set_index("claim")
    # significant (p < 0.05 with 8 positive differences) yet not a test of the paper's claim
    assert claims.loc["Two-stage U-Net + MSP (luo2020) > FCN-8s (luo2020)", "verdict"] == \
        "not tested: FCN-8s (luo2020) predicted no tumour"
    assert claims.loc["Two-stage U-Net + MSP (luo2020) > U-Net (CT)", "verdict"] == "reversed"
    text = L.reading(track)
    assert "FCN-8s (luo2020) predicted no tumour on any test patient" in text
    assert ("judged over 8 test patients; held: 0, reversed: 1, not shown: 0, not decidable at this sample "
            "size: 0, not tested (a method predicted nothing): 1") in text


def test_seeds_are_averaged_per_patient_and_five_patients_decide_nothing():
    """Two seeds of 5 patients are 5 patients, not 10: every DeepLabv3+ patient beats the U-Net in
    both seeds, yet a Wilcoxon p over 5 patients is never below 0.0625, so the claim cannot be decided
    (counted as 10 pairs it would have 'held' at p = 0.002)."""
    n = 5
    good = list(np.linspace(0.7, 0.8, n))
    track = _fake_track({"unet_ct": [g - 0.1 - 0.01 * i for i, g in enumerate(good)], "deeplab_ct": good})
    second = track.metrics.assign(seed=1, dice=track.metrics["dice"] + 0.02)
    track.metrics = pd.concat([track.metrics, second], ignore_index=True)
    c = L.claims_table(track).iloc[0]
    assert c["patients"] == 5 and c["patients favouring"] == "5 vs 0 of 5"
    assert float(c["p (Wilcoxon)"]) == pytest.approx(0.0625)
    assert c["verdict"] == "not decidable at this sample size"
    board = L.leaderboard_table(track, n_boot=200).set_index("method")
    assert board.loc["DeepLabv3+ (xue2020)", "DSC"].startswith(f"{np.mean(good) + 0.01:.3f} [")
    assert "not decidable at this sample size: 1" in L.reading(track)
    # one test over 5 patients: 0.0625 at best, so the baseline comparison cannot be decided either
    assert ("With 5 test patients and 1 test no method could have been told from its baseline: the smallest "
            "Wilcoxon p over 5 patients, Holm-adjusted for 1 test, is 0.062") in L.reading(track)
    assert "6 patients would be needed" in L.reading(track)


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_each_row_says_how_its_network_is_sized(profile):
    """The method table's size column: the one policy (width times the paper's widths) for the
    baselines, guo2021, chen2020 and xue2020, whose networks really are built at that width; the
    rows built otherwise (li2018 at half width, luo2020 at its chapter's widths without its column
    input) are named as exceptions, with the width they really have."""
    from npcrepro.models import count_parameters

    P = resolve("leaderboard", profile)
    table = L.method_table(P).set_index("key")["built as (against its chapter)"]
    exceptions = {k for k, text in table.items() if text.startswith("exception")}
    assert exceptions == {"li2018_cnn", "luo_ours_ct", "fcn8_ct"}
    assert f"width {float(P['width']) / 2:g}," in table["li2018_cnn"]
    assert "column input" in table["luo_ours_ct"] and "reads CECT, its chapter CT" in table["luo_ours_ct"]
    for key in ("guo_cnn", "bunet", "mmfnet", "unet3d_cet1"):
        assert table[key].startswith(f"width {float(P['width']):g} ")
    # guo2021's CNN is built at the width the row names: narrower width, fewer parameters
    narrow = count_parameters(M.network(M.BY_KEY["guo_cnn"], float(P["width"]) / 2, profile))
    assert narrow < count_parameters(M.network(M.BY_KEY["guo_cnn"], float(P["width"]), profile))


def _with_nnunet(track, rows: dict[str, tuple[str, str, list[float]]]):
    """``track`` with nnU-Net rows as :func:`npcrepro.chapters.leaderboard.nnunet.add_to_run` adds
    them: {key: (inputs, dims, per-case DSC)}."""
    extra = [{"method": k, "fold": 0, "seed": 0, "case": f"c{i}", "structure": "GTVp", "dice": v, "hd95": 1.0,
              "assd": 1.0, "nsd": v, "pred_empty": False, "ref_empty": False}
             for k, (_, _, vs) in rows.items() for i, v in enumerate(vs)]
    track.metrics = pd.concat([track.metrics, pd.DataFrame(extra)], ignore_index=True)
    track.info["methods"] += [{"name": k, "label": k, "info": {
        "paper": "nnU-Net", "inputs": inputs, "dims": dims, "baseline": "unet_ct" if inputs == "ct" else "unet_cet1",
        "channels": ["CECT"] if inputs == "ct" else ["CET1"]}} for k, (inputs, dims, _) in rows.items()]
    return track


def test_every_method_is_set_beside_the_nnunet_reading_its_images():
    n = 8
    good = list(np.linspace(0.7, 0.8, n))
    jitter = [0.01 * (-1) ** i for i in range(n)]
    track = _fake_track({"unet_ct": [g - 0.1 + j for g, j in zip(good, jitter)], "deeplab_ct": good,
                         "unet_cet1": good, "guo_cnn": [g + j for g, j in zip(good, jitter)]})
    track.params = {"profile": "gpu-lite", "ct_channel": "CECT"}
    assert L.nnunet_table(track).empty  # no nnU-Net row: no table, and the cells say so
    assert L.beats_nnunet(track, "deeplab_ct") == "no nnU-Net row in this run"
    assert set(L.headline_table(track)["beats nnU-Net? Δ DSC [95% CI]"]) == {"no nnU-Net row in this run"}
    track = _with_nnunet(track, {"nnunet-2d-ct": ("ct", "2d", [g - 0.05 + j for g, j in zip(good, jitter)]),
                                 "nnunet-2d-cet1": ("cet1", "2d", [g + 0.1 for g in good]),
                                 "nnunet-3dfullres-cet1": ("cet1", "3d", [g + j / 2 for g, j in zip(good, jitter)])})
    t = L.nnunet_table(track).set_index("method")
    # the nnU-Net of the same images and dims: 2D CT beside 2D CT; the 3D CNN beside the 3D nnU-Net
    assert t.loc["DeepLabv3+ (xue2020)", "nnU-Net row"] == "nnunet-2d-ct"
    assert t.loc["3D CNN (guo2021)", "nnU-Net row"] == "nnunet-3dfullres-cet1"
    assert t.loc["U-Net (CET1)", "nnU-Net row"] == "nnunet-2d-cet1"
    assert t.loc["DeepLabv3+ (xue2020)", "beats nnU-Net?"] == "beats nnU-Net"  # +0.05 on 8 of 8 patients
    assert t.loc["U-Net (CET1)", "beats nnU-Net?"] == "below nnU-Net"  # -0.1 on every patient
    assert t.loc["3D CNN (guo2021)", "beats nnU-Net?"] == "no difference shown"
    assert t.loc["DeepLabv3+ (xue2020)", "Δ DSC vs nnU-Net [95% CI]"].startswith("0.050 [")
    assert t.loc["DeepLabv3+ (xue2020)", "patients favouring"] == "8 vs 0 of 8"
    from npcrepro.claims import compare
    from npcrepro.evaluation import holm

    raw = [compare(track.metrics, k, nn, "dice")["p_wilcoxon"] for k, nn in
           (("unet_ct", "nnunet-2d-ct"), ("deeplab_ct", "nnunet-2d-ct"), ("unet_cet1", "nnunet-2d-cet1"),
            ("guo_cnn", "nnunet-3dfullres-cet1"))]
    assert [float(x) for x in t["p (Holm)"]] == pytest.approx(list(holm(raw)), rel=1e-2)  # one family
    assert L.beats_nnunet(track, "deeplab_ct").startswith("beats nnU-Net: 0.050 [")
    head = L.headline_table(track).set_index("paper")
    assert head.loc["xue2020", "beats nnU-Net? Δ DSC [95% CI]"].startswith("beats nnU-Net: 0.050 [")
    assert ("(4 methods set beside it, Holm-adjusted together), of the papers' 1 proposed method(s): 1 beats "
            "nnU-Net.") in L.reading(track)
    # nnU-Net's own rows: paired against the U-Net reading its images, apart from the book's family
    board = L.leaderboard_table(track, n_boot=100).set_index("method")
    assert board.loc["nnunet-2d-ct", "paper"] == "nnU-Net" and board.loc["nnunet-2d-ct", "dims"] == "2D"
    assert board.loc["nnunet-2d-ct", "Δ DSC vs U-Net [95% CI]"].startswith("0.050 [")


def test_nnunet_input_sets_and_choices_are_one_registry():
    from npcrepro.chapters.leaderboard import nnunet
    from npcrepro.chapters.leaderboard.recipe import NNUNET_INPUTS

    assert tuple(nnunet.INPUTS) == NNUNET_INPUTS
    assert [nnunet.inputs_of(M.channels_of(M.BY_KEY[k], {"ct_channel": "CECT"})) for k in
            ("unet_ct", "li2018_cnn", "mmfnet")] == ["ct", "cet1", "mri"]
    assert resolve("leaderboard", "gpu").nnunet == ["cet1", "mri", "ct"] and resolve("leaderboard", "cpu").nnunet == []
    with pytest.raises(ParameterError, match=r"'nnunet' of leaderboard must be one of \['cet1', 'mri', 'ct'\] \(each "
                                             r"item\), got \['cet1', 't2'\]"):
        resolve("leaderboard", "cpu", nnunet=["cet1", "t2"])
    with pytest.raises(ParameterError, match="nnunet_configurations"):
        resolve("leaderboard", "cpu", nnunet_configurations=["3d_lowres"])
