"""xue2020: DeepLabv3+ / MobileNetV2 and the U-Net baseline; the chapter (prepare, methods, report),
its recipe, the contract and the notebook."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import npcrepro.models.deeplab  # noqa: F401 - registers the DeepLab models
from npcrepro.errors import ParameterError
from npcrepro.models import available, build, count_parameters
from npcrepro.models.deeplab import DeepLabV3Plus, InvertedResidual, MobileNetV2Encoder, make_divisible

torch.set_num_threads(2)


# ----------------------------------------------------------------------------------------- models
def test_registered():
    assert {"deeplabv3plus", "deeplabv3plus", "unet2d"} <= set(available())


@pytest.mark.parametrize("name,kw,n_classes", [("deeplabv3plus", {}, 1),
                                               ("deeplabv3plus", {}, 3),
                                               ("deeplabv3plus", {"output_stride": 8}, 1),
                                               ("unet2d", {"widths": (8, 16, 32, 64)}, 1),
                                               ("unet2d", {"widths": (8, 16, 32, 64)}, 3)])
def test_forward_backward_shapes(name, kw, n_classes):
    torch.manual_seed(0)
    net = build(name, in_channels=1, n_classes=n_classes, **kw)
    x = torch.randn(2, 1, 48, 40, requires_grad=True)
    y = net(x)
    assert y.shape == (2, n_classes, 48, 40)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)


def test_odd_sizes_and_eval_mode():
    net = build("deeplabv3plus", in_channels=2, n_classes=1).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, 37, 53))
    assert y.shape == (1, 1, 37, 53)


def test_batch_of_one_in_training_mode():
    # the image-pooling branch holds a 1x1 map; a batch of one must still train
    net = build("deeplabv3plus").train()
    net(torch.randn(1, 1, 32, 32)).mean().backward()


@pytest.mark.parametrize("os_", [8, 16, 32])
def test_output_stride(os_):
    net = build("deeplabv3plus", output_stride=os_)
    with torch.no_grad():
        f = net.eval().features(torch.randn(1, 1, 64, 96))
    assert f["high"].shape[2:] == (64 // os_, 96 // os_)
    assert f["low"].shape[2:] == (16, 24)            # low-level features at stride 4
    assert f["low"].shape[1] == 24 and f["high"].shape[1] == 320
    assert f["aspp"].shape[1] == 256
    assert f["decoder"].shape[2:] == (16, 24)         # x4 upsampled ASPP output meets the low level
    assert net.encoder.stage_strides[-1] == os_


def test_documented_choices():
    net = build("deeplabv3plus")
    assert net.output_stride == 16
    assert net.aspp.rates == (6, 12, 18)
    assert build("deeplabv3plus", output_stride=8).aspp.rates == (12, 24, 36)
    assert net.encoder.stage_channels == [16, 24, 32, 64, 96, 160, 320]
    assert net.encoder.stem[0].out_channels == 32
    assert net.low_project[0].out_channels == 48
    # stage dilations at OS 16: only the 160 and 320 stages are atrous
    assert net.encoder.stage_dilations == [1, 1, 1, 1, 1, 2, 2]


def test_parameter_counts_in_documented_range():
    net = build("deeplabv3plus")
    n = count_parameters(net)
    assert 2.6e6 < n < 2.8e6                         # documented: about 2.71 M
    assert 1.80e6 < count_parameters(net.encoder) < 1.82e6   # MobileNetV2 without its 1280 tail
    plain = count_parameters(build("deeplabv3plus", separable=False))
    assert 5.7e6 < plain < 5.9e6                     # documented: about 5.81 M
    assert 1.9e6 < count_parameters(build("unet2d")) < 2.0e6


def test_width_multiplier_and_no_decoder():
    small = build("deeplabv3plus", width=0.5)
    assert small.encoder.stage_channels[-1] == make_divisible(160)
    assert count_parameters(small) < count_parameters(build("deeplabv3plus"))
    v3 = DeepLabV3Plus(1, 2, decoder=False).eval()
    with torch.no_grad():
        assert v3(torch.randn(1, 1, 32, 32)).shape == (1, 2, 32, 32)


def test_inverted_residual_shortcut():
    assert InvertedResidual(16, 16, 1, 6).use_residual
    assert not InvertedResidual(16, 24, 1, 6).use_residual
    assert not InvertedResidual(16, 16, 2, 6).use_residual


def test_residual_blocks_start_as_their_shortcut():
    from npcrepro.models.blocks import zero_init_residuals

    net = build("deeplabv3plus")
    blocks = [m for m in net.modules() if isinstance(m, InvertedResidual)]
    shortcut = [b for b in blocks if b.use_residual]
    # MobileNetV2's 17 blocks: the stages' first blocks change width or stride, the other 10 add their input
    assert len(blocks) == 17 and len(shortcut) == 10
    for b in blocks:
        gamma = b.body[-1][1].weight
        assert torch.all(gamma == 0) if b.use_residual else torch.all(gamma == 1)
    block, x = InvertedResidual(24, 24, 1, 6), torch.randn(2, 24, 8, 8)
    assert zero_init_residuals(block) == 1
    for mode in ("train", "eval"):
        with torch.no_grad():
            assert torch.equal(getattr(block, mode)()(x), x)
    assert zero_init_residuals(InvertedResidual(16, 24, 1, 6)) == 0
    # off: every projection BatchNorm keeps scale 1; the helper finds nothing in a network without shortcuts
    plain = build("deeplabv3plus", zero_init_residual=False)
    assert all(torch.all(m.body[-1][1].weight == 1) for m in plain.modules() if isinstance(m, InvertedResidual))
    assert zero_init_residuals(plain) == 10
    assert zero_init_residuals(build("unet2d")) == 0


def test_bad_parameters():
    with pytest.raises(ParameterError):
        MobileNetV2Encoder(output_stride=4)
    with pytest.raises(ParameterError):
        build("deeplabv3plus", nonsense=1)
    with pytest.raises(ValueError):
        build("deeplabv3plus")(torch.randn(1, 1, 8, 8, 8))


# ----------------------------------------------------------------------------------------- chapter
import re  # noqa: E402

import numpy as np  # noqa: E402

from npcrepro import papers, profiles  # noqa: E402
from npcrepro.datasets import Case  # noqa: E402
from npcrepro.errors import DataError  # noqa: E402
from npcrepro.chapters.xue2020 import methods as M, prepare as X, report as R  # noqa: E402
from chapter_contract import ChapterContract  # noqa: E402


def _case(nodes_x=(4, 10), spacing=(3.0, 4.0, 4.0)):
    """A 16 x 64 x 64 case: cord at x = 32, a primary at x = 28..36, node blobs at 32 + dx columns."""
    shape = (16, 64, 64)
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, 8:56, 8:56] = 40.0
    cord = np.zeros(shape, bool)
    cord[:, 44:47, 31:34] = True
    gtvp = np.zeros(shape, bool)
    gtvp[6:10, 20:28, 28:36] = True
    nd = np.zeros(shape, bool)
    for dx in nodes_x:
        nd[5:8, 30:33, 32 + dx - 1:32 + dx + 2] = True
    cect = ct + np.where(gtvp | nd, 35.0, 7.0).astype(np.float32)   # enhanced tumour and nodes
    return Case("c0", {"CT": ct, "CECT": cect}, {"GTVp": gtvp, "GTVnd": nd, "SpinalCord": cord}, spacing)


def test_target_rules():
    case = _case()
    rp, n_rp, n_other = X.retropharyngeal_nodes(case)      # 16 mm (in) and 40 mm (out) from midline
    assert (n_rp, n_other) == (1, 1)
    assert rp[:, :, 36].any() and not rp[:, :, 42].any()
    m, facts = X.derive_target(case, "gtvp_rpn")
    assert m.sum() == case.labels["GTVp"].sum() + rp.sum() and facts["rp_nodes"] == 1
    assert X.derive_target(case, "gtvp")[0].sum() == case.labels["GTVp"].sum()
    both = X.derive_target(case, "gtvp_gtvnd")[0]
    assert both.sum() == (case.labels["GTVp"] | case.labels["GTVnd"]).sum()
    with pytest.raises(DataError):
        X.derive_target(case, "ptv70")
    with pytest.raises(ParameterError):
        X.derive_target(case, "everything")
    xc = X.xue_case(case)
    assert list(xc.images) == ["CECT"] and xc.labels[X.TARGET].sum() == m.sum()   # the paper's CT
    assert xc.meta["xue2020"]["rule"] == "gtvp_rpn" and xc.meta["xue2020"]["channel"] == "CECT"
    plain = X.xue_case(case, channel="CT")
    assert list(plain.images) == ["CT"] and plain.images["CT"] is case.images["CT"]
    del case.images["CECT"]
    with pytest.raises(DataError, match="no CECT channel"):
        X.xue_case(case)


def test_retropharyngeal_nodes_match_scipy_centre_of_mass():
    """The kept components are those whose scipy centre of mass lies within the distance, on
    random node masks with components on both sides of the threshold."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    for _ in range(5):
        case = _case()
        nd = ndimage.binary_dilation(rng.random(case.shape) > 0.995, iterations=1)
        case.labels["GTVnd"] = nd
        lab, n = ndimage.label(nd)
        com = ndimage.center_of_mass(nd, lab, range(1, n + 1))
        mid = X.midline_x(case)
        ref = np.isin(lab, [i + 1 for i, c in enumerate(com) if abs(c[2] - mid) * case.spacing[2] < 20.0])
        rp, n_rp, n_other = X.retropharyngeal_nodes(case, 20.0)
        assert n > 5 and 0 < n_rp < n and n_rp + n_other == n
        np.testing.assert_array_equal(rp, ref)


def test_midline_from_cord_then_body():
    case = _case()
    assert X.midline_x(case) == pytest.approx(32.0)
    del case.labels["SpinalCord"]
    assert X.midline_x(case) == pytest.approx(31.5)    # grid centre (no body label either)


def test_normalise_ct_window():
    out = X.normalise_ct(np.array([-1000.0, -200.0, 50.0, 300.0, 2000.0]))
    np.testing.assert_allclose(out, [0, 0, 0.5, 1, 1], atol=1e-6)


def test_augment_identity_flip_and_binary_labels():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(1, 32, 40)).astype(np.float32)
    lab = np.zeros((1, 32, 40), bool)
    lab[0, 10:20, 5:15] = True
    ident = X.XueAugment(flip=False, rotate_deg=0, zoom=(1, 1), shift=0)
    i2, l2 = ident(img, lab, np.random.default_rng(1))
    np.testing.assert_allclose(i2, img, atol=1e-5)
    assert (l2 == lab).all()
    aug = X.XueAugment()
    a1 = aug(img, lab, np.random.default_rng(5))
    a2 = aug(img, lab, np.random.default_rng(5))
    np.testing.assert_array_equal(a1[0], a2[0])        # a pure function of the generator
    assert a1[0].shape == img.shape and a1[1].shape == lab.shape and a1[1].dtype == bool
    assert 0.6 < a1[1].sum() / lab.sum() < 1.6          # zoom 0.9-1.1 keeps the area roughly
    with pytest.raises(ParameterError):
        X.XueAugment(zoom=(1.2, 1.0))


def test_aspp_rates_follow_pixel_size():
    assert M.aspp_rates_for(0.98) == (6, 12, 18)
    assert M.aspp_rates_for(2.0) == (3, 6, 9)
    assert M.aspp_rates_for(4.0) == (1, 3, 4)
    assert M.aspp_rates_for(2.0, scale=False) == (6, 12, 18)
    P = profiles.resolve("xue2020", "smoke")
    assert M.build_model("DeepLabv3+", P, pixel_mm=2.0).aspp.rates == (3, 6, 9)


def test_profiles_follow_the_paper_recipe():
    recipe = papers.info("xue2020").recipe
    gpu = profiles.resolve("xue2020", "gpu")
    assert gpu.lr == recipe["lr"]["value"] and gpu.batch_size == recipe["batch_size"]["value"]
    assert gpu.epochs == recipe["epochs"]["value"] and gpu.lr_factor == 0.8 and gpu.lr_patience == 5
    assert (gpu.n_cases - gpu.n_val - gpu.n_test, gpu.n_val, gpu.n_test) == (120, 15, 15)
    assert gpu.unet_widths == [64, 128, 256, 512, 1024]
    assert gpu.schedule == "plateau" and gpu.warmup == 0 and gpu.grad_clip == 0
    smoke, cpu = profiles.resolve("xue2020", "smoke"), profiles.resolve("xue2020", "cpu")
    assert smoke.iterations and smoke.lr == gpu.lr and smoke.schedule == "plateau"
    # cpu: the converging recipe (warm-up, cosine twice over the budget, clipping, a lower peak lr), each a
    # named deviation
    assert cpu.iterations and (cpu.lr, cpu.schedule, cpu.warmup, cpu.cycles, cpu.grad_clip) == (
        0.003, "cosine", 0.1, 2, 1.0)
    from npcrepro import recipes

    named = {d["parameter"] for d in recipes.deviations("xue2020", "cpu") if d["why"]}
    assert {"lr", "schedule", "warmup", "cycles", "grad_clip"} <= named
    with pytest.raises(ParameterError):
        profiles.resolve("xue2020", "cpu", target="everything")


def test_output_prior_initialisation():
    """cpu: both networks' output layer starts at probability 0.01 (bias logit(0.01)), in the chapter and
    in the leaderboard's copy; gpu keeps the layers' default (bias near 0); a prior outside (0, 1) fails."""
    import math

    cpu, gpu = profiles.resolve("xue2020", "cpu"), profiles.resolve("xue2020", "gpu")
    assert cpu.prior == 0.01 and gpu.prior is None
    logit = math.log(0.01 / 0.99)
    torch.manual_seed(0)
    for label in ("DeepLabv3+", "U-Net"):
        head = M.build_model(label, cpu.replace(unet_widths=[4, 8, 16, 32, 64]), pixel_mm=2.0).head
        assert torch.allclose(head.bias.detach(), torch.full_like(head.bias, logit))
        assert float(head.weight.detach().abs().max()) < 0.06  # N(0, 0.01): 6 sd
    net = M.network("DeepLabv3+", width=0.25, in_channels=1, profile="cpu").eval()
    with torch.no_grad():
        p = torch.sigmoid(net(torch.randn(2, 1, 64, 64)))
    assert 0.005 < float(p.mean()) < 0.02
    default = M.build_model("DeepLabv3+", gpu.replace(deeplab_width=0.25), pixel_mm=0.98).head
    assert abs(float(default.bias.detach().mean())) < 1.0
    with pytest.raises(ParameterError, match="prior"):
        M.build_model("U-Net", cpu.replace(prior=1.5, unet_widths=[4, 8, 16, 32, 64]))


def test_split_sizes_scale_down():
    P = profiles.resolve("xue2020", "cpu", n_cases=20, n_val=3, n_test=5)
    assert X.split_sizes(40, P) == (5, 3)                     # enough cases: the profile's sizes
    assert X.split_sizes(20, P) == (5, 3)
    assert X.split_sizes(8, P) == (2, 1)
    assert X.split_sizes(3, P) == (1, 1)


def test_time_per_slice():
    P = profiles.resolve("xue2020", "smoke")
    t = M.time_per_slice(M.build_model("U-Net", P), (32, 32), "cpu", n=2, warmup=1)
    assert t["ms_median"] > 0 and t["shape"] == (32, 32) and "CPU" in t["device"]


@pytest.mark.slow
def test_notebook_smoke(run_notebook, run_folder):
    nb = run_notebook("xue2020")
    glued = set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", out
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            if name:
                glued.add(name)
    wanted = {m for c in nb.cells if c.cell_type == "markdown"
              for m in re.findall(r"\{glue:text\}`([^`]+)`", c.source)}
    assert wanted and wanted <= glued, sorted(wanted - glued)
    assert any("(reproduced)" in str(o.get("data", {})) for c in nb.cells for o in c.get("outputs", []))
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.output_type == "stream")
    match = re.search(r"run folder: (\S+)", text)
    assert match, text[-2000:]
    run = run_folder(match.group(1))
    assert run.parts[-4:-1] == ("runs", "smoke", "xue2020")
    assert {"params.json", "environment.json", "run.json", "splits.json", "metrics.csv", "training.csv",
            "deeplabv3plus", "unet", "DONE"} <= {p.name for p in run.iterdir()}
    assert list((run / "unet" / "fold_0" / "seed_0" / "predictions").glob("*/GTVp.nii.gz"))
    import pandas as pd

    training = pd.read_csv(run / "training.csv")  # smoke trains with the paper's plateau rule: cuts counted
    assert (training["lr_cuts"] >= 0).all() and training["lr_cuts"].notna().all()


def test_notebook_is_clean_and_parameterised():
    import nbformat

    from npcrepro.paths import repo_root

    nb = nbformat.read(str(repo_root() / "notebooks" / "xue2020.ipynb"), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.get("id") != "npcrepro-setup"]  # Binder/Colab
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for name in ("profile", "data", "device", "seed", "out_dir"):
        assert re.search(rf"^{name}(: \w+)? = ", params[0].source, re.M), name
    assert "_before = set(globals())" in code[0].source
    assert not any("MPLBACKEND" in c.source for c in nb.cells)


def test_training_note_flags_a_model_that_did_not_learn():
    ok = R.training_note({"DeepLabv3+": 0.41, "U-Net": 0.44})
    assert ok.startswith("Both networks learned") and "DeepLabv3+ 0.41" in ok
    bad = R.training_note({"DeepLabv3+": 0.92, "U-Net": 0.44})
    assert bad.startswith("DeepLabv3+ did not learn") and "U-Net did not" not in bad
    assert "0.92" in bad and "failed training" in bad
    edge = R.training_note({"DeepLabv3+": R.NOT_LEARNED_LOSS, "U-Net": 0.9})
    assert edge.startswith("DeepLabv3+ and U-Net did not learn")
    assert "not known" in R.training_note({"U-Net": None})


def test_network_for_the_leaderboard_matches_the_old_builder():
    # the leaderboard built DeepLabv3+ as build_model("DeepLabv3+", {"output_stride": 16, "deeplab_width":
    # width, "scale_aspp": True}, in_channels, pixel_mm=2.0); network() gives the same from the recipe
    for width in (0.5, 1.0):
        new = M.network("DeepLabv3+", width=width, in_channels=2, profile="cpu")
        old = M.build_model("DeepLabv3+", {"output_stride": 16, "deeplab_width": width, "scale_aspp": True}, 2,
                            pixel_mm=2.0)
        assert new.aspp.rates == old.aspp.rates == (3, 6, 9)
        assert count_parameters(new) == count_parameters(old)
        assert [p.shape for p in new.parameters()] == [p.shape for p in old.parameters()]
    unet = M.network("unet", width=0.5, in_channels=1, profile="gpu")
    assert count_parameters(unet) == count_parameters(build("unet2d", widths=[32, 64, 128, 256, 512]))
    with pytest.raises(ParameterError):
        M.network("DeepLabv3+", width=1.0, in_channels=1, profile="huge")


def test_prediction_is_on_the_case_grid_with_a_crop():
    from types import SimpleNamespace

    case = X.xue_case(_case())
    P = profiles.resolve("xue2020", "smoke", image_size=[32, 48])
    ctx = SimpleNamespace(P=P, device="cpu")
    method = M.CHAPTER.method("unet", P)
    torch.manual_seed(0)
    out = M.CHAPTER.predict(method, M.CHAPTER.build(method, P), case, ctx)
    assert list(out) == [X.TARGET] and out[X.TARGET].shape == case.shape
    assert out[X.TARGET].dtype == np.float32
    assert (out[X.TARGET][:, :16] == 0).all()        # outside the centre crop: background


def test_prepared_case_leaves_the_source_alone_and_methods_are_the_two_networks():
    case = _case()
    before = {k: v.copy() for k, v in case.labels.items()}
    P = profiles.resolve("xue2020", "smoke")
    xc = M.CHAPTER.prepare(case, P)
    assert all((case.labels[k] == v).all() for k, v in before.items()) and set(case.labels) == set(before)
    assert xc.labels[X.TARGET].sum() > case.labels["GTVp"].sum()
    assert [(m.name, m.label) for m in M.CHAPTER.methods(P)] == [("deeplabv3plus", "DeepLabv3+"),
                                                                  ("unet", "U-Net")]
    folds = M.CHAPTER.folds([f"c{i}" for i in range(8)], profiles.resolve("xue2020", "cpu"))
    # 8 cases for the cpu profile's 40: test and validation in its proportions (20 / 40 and 5 / 40 of 8)
    assert len(folds) == 1 and (len(folds[0].test), len(folds[0].val)) == (4, 1)


def test_real_params_switch_to_the_openkbp_track():
    P = profiles.resolve("xue2020", "cpu", resume="somewhere")
    Q = X.real_params(P)
    assert (Q.target, Q.iterations, Q.image_size, Q.resume) == ("ptv70", P.real_iterations, P.real_image_size, "")
    assert P.channel == "CECT" and Q.channel == "CT"          # OpenKBP scans have one CT
    assert Q.n_cases == P.n_cases and Q.epochs is None
    assert (P.weights, Q.weights) == ("best", P.real_weights) == ("best", "last")
    assert (P.context, Q.context) == (0, P.real_context) == (0, 1)          # the phantom reads one slice
    assert X.openkbp_data(profiles.resolve("xue2020", "smoke"))[0] is None     # real_cases 0: off


def test_context_gives_the_networks_neighbouring_slices():
    """context=1: three input channels (slices z-1, z, z+1, the ends repeated) in training, in
    prediction and in the timed network; the OpenKBP track takes real_context."""
    case = X.xue_case(_case())
    P = profiles.resolve("xue2020", "smoke", context=1, image_size=[32, 48])
    train, _ = X.slice_datasets([case], [], P)
    assert train.in_channels == 3
    image, _ = train.get(0, None)
    z = train.items[0][1]
    ct = X.normalise_ct(case.images["CECT"])
    assert np.allclose(image, [ct[z + d, 16:48, 8:56] for d in (-1, 0, 1)])
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(len(x), 1, *x.shape[2:])

    out = M.CHAPTER.predict(M.CHAPTER.method("unet", P), Spy(), case, SimpleNamespace(P=P, device="cpu"))
    assert out[X.TARGET].shape == case.shape
    x = torch.cat(seen).numpy()
    n = case.shape[0]
    assert x.shape == (n, 3, 32, 48)
    assert np.allclose(x[:, 0], ct[[0] + list(range(n - 1)), 16:48, 8:56])
    assert np.allclose(x[:, 2], ct[list(range(1, n)) + [n - 1], 16:48, 8:56])
    assert M.CHAPTER.build(M.CHAPTER.method("deeplabv3plus", P), P)(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)
    assert X.real_params(profiles.resolve("xue2020", "cpu", context=2, real_context=1)).context == 1
    with pytest.raises(ParameterError, match="context"):
        profiles.resolve("xue2020", "cpu", real_context=-1)


class Testxue2020Contract(ChapterContract):
    chapter = "xue2020"
    # smaller and faster than smoke: a narrower DeepLab, 4 iterations of batch 2, one timed slice
    overrides = {"iterations": 4, "eval_every": 2, "batch_size": 2, "deeplab_width": 0.5, "timing_slices": 1,
                 "unet_widths": [4, 8, 16]}
    kill_at = 3  # after the checkpoint of iteration 2


def test_weights_set_what_the_trainer_hands_over(monkeypatch):
    import npcrepro.engine

    class Built(Exception):
        pass

    restored = []

    def trainer(*args, **kwargs):
        restored.append(kwargs["restore_best"])
        raise Built

    monkeypatch.setattr(npcrepro.engine, "Trainer", trainer)
    monkeypatch.setattr(M, "slice_datasets", lambda train, val, P: (list(train), list(val) or None))
    monkeypatch.setattr(M, "pixel_size", lambda cases: 2.0)
    for weights, val in [("best", ["v"]), ("last", ["v"]), ("best", [])]:
        P = profiles.resolve("xue2020", "smoke", weights=weights)
        with pytest.raises(Built):
            M.CHAPTER.fit(M.CHAPTER.methods(P)[1], ["t"], val, SimpleNamespace(P=P, trainer_args=dict))
    assert restored == [True, False, False]     # no validation patients: nothing to pick the best by
    with pytest.raises(ParameterError, match="weights"):
        profiles.resolve("xue2020", "cpu", real_weights="middle")


def test_stage_table_sets_table1_beside_the_cohort(monkeypatch):
    """Table 1 as reported (every count and percent of the paper's DEMOGRAPHICS) beside the T and N
    stage mix of the run's patients."""
    from types import SimpleNamespace

    from npcrepro.chapters.xue2020 import report as R
    from npcrepro.chapters.xue2020 import paper

    cases = {f"c{i}": SimpleNamespace(meta={"t_stage": t, "n_stage": n})
             for i, (t, n) in enumerate([("T3", "N2"), ("T3", "N0"), ("T4", "N2"), ("T1", "N1")])}
    monkeypatch.setattr(R, "reference_cases", lambda results: cases)
    t = R.stage_table(None).set_index("characteristic")
    assert t.loc["patients", "reported (Table 1)"] == "150" and t.loc["patients", "this run"] == "4"
    assert t.loc["T stage: T3", "reported (Table 1)"] == "79 (52.7 %)"
    assert t.loc["T stage: T3", "this run"] == "2 (50.0 %)" and t.loc["T stage: T2", "this run"] == "0 (0.0 %)"
    assert t.loc["N stage: N2", "this run"] == "2 (50.0 %)" and t.loc["N stage: N3", "reported (Table 1)"] == "17 (11.3 %)"
    assert t.loc["sex: male", "this run"] == "not modelled"
    n_rows = 2 + sum(len(paper.DEMOGRAPHICS[g]) for g in ("sex", "t_stage", "n_stage", "treatment"))
    assert len(t) == n_rows


def test_schedule_is_the_papers_plateau_at_gpu_and_cosine_twice_with_warmup_at_cpu():
    from npcrepro.chapters.xue2020.methods import schedule

    cpu = schedule(profiles.resolve("xue2020", "cpu"), {"iterations": 240})
    assert cpu == {"kind": "cosine", "total": 240, "unit": "iteration", "warmup": 12, "cycles": 2}
    gpu = schedule(profiles.resolve("xue2020", "gpu"), {"epochs": 200})
    assert gpu == {"kind": "plateau", "factor": 0.8, "patience": 5, "unit": "epoch", "warmup": 0}


def test_lr_cuts_are_counted_for_the_plateau_rule_only(tmp_path):
    """A cosine schedule lowers the rate at every evaluation; the training table's "lr cuts" are the
    plateau rule's, so a cosine run has none to count (they were shown as 26 cuts in 600 iterations)."""
    from npcrepro import chapters

    P = profiles.resolve("xue2020", "smoke", out_dir=str(tmp_path), device="cpu", real_data="off")
    cosine = chapters.run(P.replace(schedule="cosine"), name="cosine")
    assert cosine.training["lr_cuts"].isna().all()
    assert (cosine.training["final_lr"] < float(P["lr"])).all()


# ----------------------------------------------------------------------------------- which CT
def test_channel_is_the_papers_contrast_ct_at_every_profile_and_ct_is_accepted():
    from npcrepro import papers, recipes

    for profile in profiles.profiles("xue2020"):
        assert profiles.resolve("xue2020", profile).channel == "CECT", profile
        assert "channel" not in {d["parameter"] for d in recipes.deviations("xue2020", profile)}
    assert recipes.load("xue2020").PAPER["channel"] == ("image", "CECT")
    assert papers.info("xue2020").recipe["image"]["source"] == "Sec. 1.1"
    assert profiles.resolve("xue2020", "smoke", channel="CT").channel == "CT"
    with pytest.raises(ParameterError) as err:
        profiles.resolve("xue2020", "smoke", channel="T1")
    assert "channel" in str(err.value) and "CECT" in str(err.value) and "\n" not in str(err.value)
    assert "=" not in recipes.load("xue2020").HELP["channel"]


def test_chapter_reads_the_chosen_ct_and_names_it(tmp_path):
    from npcrepro.datasets.format import write_dataset

    ds = write_dataset(tmp_path / "ds", [_case()], channels=["CT", "CECT"], structures=["GTVp", "GTVnd", "SpinalCord"],
                       progress=False)
    for channel in ("CECT", "CT"):
        P = profiles.resolve("xue2020", "smoke", channel=channel)
        assert M.CHAPTER.channels_for(P, ds) == (channel,)
        case = M.CHAPTER.prepare(M.CHAPTER.load(ds, "c0", P), P)
        assert list(case.images) == [channel]
        np.testing.assert_allclose(case.images[channel], _case().images[channel])
        assert R.run_channel(P) == channel and channel in R.channel_text(P)
        assert R.recipe_table(P).set_index("item").loc["image", "this run"].startswith(channel)
    assert R.run_channel({"target": "gtvp"}) == "CT"          # runs from before the parameter
    plain = _case()
    del plain.images["CECT"]
    ct_only = write_dataset(tmp_path / "ct", [plain], channels=["CT"], structures=["GTVp", "GTVnd", "SpinalCord"],
                            progress=False)
    with pytest.raises(DataError, match="channel='CT'") as err:
        M.CHAPTER.load(ct_only, "c0", profiles.resolve("xue2020", "smoke"))
    assert "\n" not in str(err.value)


def test_p_value_table_judges_the_claim_per_metric_over_patients():
    """Eight patients, DeepLabv3+ better on every one: the claim holds on the overlaps and on the
    distances (lower is better there); the Wilcoxon p is Holm-adjusted over the four metrics."""
    import pandas as pd

    from npcrepro.engine.results import Results

    rows = []
    for i in range(8):
        for name, shift in (("deeplabv3plus", 0.05 + 0.01 * i), ("unet2d", 0.0)):
            d = 0.6 + 0.02 * i + shift
            rows.append({"method": name, "fold": 0, "seed": 0, "case": f"c{i}", "structure": "GTVp", "dice": d,
                         "jaccard": d / (2 - d), "assd": 3 - 10 * shift, "hd": 20 - 50 * shift})
    info = {"methods": [{"name": "deeplabv3plus", "label": "DeepLabv3+"}, {"name": "unet2d", "label": "U-Net"}]}
    t = R.p_value_table(Results(None, info, {}, pd.DataFrame(rows))).set_index("metric")
    assert (t["n"] == 8).all() and (t["patients DeepLabv3+ better"] == "8 of 8").all()
    assert (t["verdict (DeepLabv3+ better)"] == "holds").all()
    assert t.loc["DSC", "p, Wilcoxon, Holm over the 4 metrics"] == pytest.approx(4 * 2 / 256)
    assert t.loc["HD (mm)", "mean difference (DeepLabv3+ - U-Net)"] < 0


def test_location_prior_stands_beside_the_networks_on_the_same_test_patients(monkeypatch):
    """The prior of a fold is the mean of its training and validation masks (not its test masks); each
    network is judged against it over the test patients, Holm over the two networks."""
    import pandas as pd

    from npcrepro.datasets.splits import Fold

    shape = (2, 3, 3)
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[0, 0, :] = True
    b[0, 0, :2] = True
    c[0, 0, 0] = c[1, 2, 2] = True
    # voxel frequencies over a, b, c (training and validation): (0,0,0) 3/3, (0,0,1) 2/3, the others 1/3
    tests = {}
    for i in range(7):
        m = np.zeros(shape, bool)
        m[0, 0, 0] = True
        m[1, i // 3, i % 3] = True                      # one voxel the prior does not hold
        tests[f"t{i}"] = m                              # prior at 0.5: 2 voxels, 1 shared -> DSC 0.5
    tests["t0"] = np.zeros(shape, bool)                 # no target: the prior scores 0
    masks = {"a": a, "b": b, "c": c, **tests}
    monkeypatch.setattr(X, "reference_cases",
                        lambda results, names: {n: SimpleNamespace(labels={X.TARGET: masks[n]}) for n in names})
    run = SimpleNamespace(splits=lambda: [Fold(["a", "b"], ["c"], list(tests))])
    prior = R.location_prior(run, 0.5)
    assert list(prior["case"]) == list(tests) and set(prior["fold"]) == {0} and set(prior["method"]) == {R.PRIOR}
    assert prior["dice"].tolist() == pytest.approx([0.0] + [0.5] * 6)
    assert R.location_prior(run, 0.9)["dice"].tolist() == pytest.approx([0.0] + [2 / 3] * 6)   # (0,0,0) only

    nets = pd.DataFrame([{"method": label, "case": n, "dice": d + sign * (shift + 0.01 * i), "seeds": 2}
                         for label, sign, shift in (("DeepLabv3+", 1, 0.1), ("U-Net", -1, 0.05))
                         for i, (n, d) in enumerate(zip(prior["case"], prior["dice"]))])
    monkeypatch.setattr(R, "labelled", lambda results: nets)
    table = R.prior_table(run, 0.5).set_index("network")
    assert table.loc["DeepLabv3+", "difference"] == pytest.approx(0.13)     # 0.1 + 0.01 x the mean of 0..6
    assert table.loc["U-Net", "difference"] == pytest.approx(-0.08)
    assert list(table["patients network higher"]) == ["7 of 7", "0 of 7"]
    assert list(table["seeds"]) == [2, 2]
    # 7 patients, all one way: exact Wilcoxon p 2/128, Holm over the 2 networks 4/128
    assert table["p, Wilcoxon, Holm over the 2 networks"].tolist() == pytest.approx([4 / 128] * 2)
    assert list(table["verdict (network higher)"]) == ["holds", "reversed"]
    text = R.prior_sentence(table.reset_index(), 0.5)
    assert "scores DSC 0.429 on the same 7 held-out patients" in text
    assert "DeepLabv3+ +0.130 (higher on 7 of 7 patients, Holm p 0.031: holds)" in text
