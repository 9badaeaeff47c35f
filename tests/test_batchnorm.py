"""Batch-norm statistics measured over training batches (Trainer ``bn_batches``): the population mean
and variance against numpy, a deeper network against its own training-mode output, the trainer's
final and half-budget weights; the end of each cycle trained with them held fixed (``bn_fixed``)."""
import numpy as np
import pytest
import torch

from npcrepro.engine import RunFolder, Stage
from npcrepro.engine.batchnorm import FixedStatistics, batch_norms, measure_batch_norm, population_statistics
from npcrepro.engine.checkpoints import load_checkpoint
from npcrepro.engine.schedules import cosine_cycles
from npcrepro.errors import ParameterError
from test_engine import _tiny_trainer, blob_case


def test_one_layer_gets_the_mean_and_unbiased_variance_of_all_its_inputs():
    gen = torch.Generator().manual_seed(0)
    # three unlike batches (different sizes, offsets and spreads), 2 channels, 3D
    batches = [torch.randn(n, 2, 3, 4, 5, generator=gen) * s + o
               for n, s, o in ((2, 1.0, 0.0), (1, 3.0, 5.0), (3, 0.5, -2.0))]
    bn = torch.nn.BatchNorm3d(2).eval()
    weight = bn.weight.detach().clone()
    assert population_statistics(bn, batches) == 3
    flat = np.concatenate([b.numpy().transpose(1, 0, 2, 3, 4).reshape(2, -1) for b in batches], axis=1)
    np.testing.assert_allclose(bn.running_mean.numpy(), flat.mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), flat.var(axis=1, ddof=1), rtol=1e-5)
    assert not bn.training  # left in the mode it was in
    assert torch.equal(bn.weight, weight)  # the weights are not changed
    # the running averages of training (momentum 0.1) differ from the population statistics
    ema = torch.nn.BatchNorm3d(2).train()
    for b in batches:
        ema(b)
    assert not torch.allclose(ema.running_mean, bn.running_mean, atol=0.1)


def test_a_deeper_network_scores_in_eval_mode_as_it_trains_on_one_batch():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 3, 3, padding=1), torch.nn.BatchNorm2d(3))
    x = torch.randn(4, 1, 32, 32) * 2 + 1
    population_statistics(net, [x])
    with torch.no_grad():
        trained = net.train()(x)  # batch statistics (biased variance, n = 4096 voxels per channel)
        scored = net.eval()(x)
    # the second layer's statistics are those of its inputs in training mode, not of the raw image
    # (eval mode divides by the unbiased variance: 1 + 1/(2n) apart)
    assert torch.allclose(trained, scored, rtol=1e-3, atol=1e-3)


def test_a_network_without_batch_norm_is_not_run():
    calls = []
    net = torch.nn.Conv2d(1, 1, 1)
    net.register_forward_hook(lambda *a: calls.append(1))
    assert batch_norms(net) == []
    assert population_statistics(net, [torch.zeros(1, 1, 2, 2)]) == 0 and not calls


def test_the_trainer_scores_measured_statistics_and_refuses_bad_counts():
    cases = [blob_case(i, (6, 32, 32)) for i in range(4)]
    for bad in (-1, True, 1.5):
        with pytest.raises(ParameterError, match="bn_batches"):
            _tiny_trainer(cases, bn_batches=bad)
    plain, net0 = _tiny_trainer(cases)
    plain.fit()
    measured, net1 = _tiny_trainer(cases, bn_batches=3)
    half = []
    measured.callbacks.append(lambda t, e, i: half.append(t.final_state()) if e == "iteration" and not half else None)
    measured.fit()
    layers0, layers1 = batch_norms(net0), batch_norms(net1)
    assert layers1, "the tiny U-Net has batch norm"
    # the same training, other statistics: the weights agree, the running statistics do not
    assert all(torch.equal(a, b) for a, b in zip(net0.parameters(), net1.parameters()))
    assert not all(torch.allclose(a.running_mean, b.running_mean) for a, b in zip(layers0, layers1))
    # the final statistics are the population statistics of the trainer's own measuring batches
    again = {k: v.clone() for k, v in net1.state_dict().items()}
    measure_batch_norm(measured, net1)
    assert all(torch.equal(again[k], v) for k, v in net1.state_dict().items())
    # the mid-training copy has measured statistics too, and training went on with its own
    first = half[0]
    name = next(n for n, m in net1.named_modules() if m is layers1[0])
    assert not torch.equal(first[f"{name}.running_mean"], again[f"{name}.running_mean"])


def test_fixed_shares_lie_at_the_end_of_each_cycle_and_bad_settings_are_refused():
    assert FixedStatistics(0.25, 256).spans(480, 2) == [(180, 240), (420, 480)]
    assert FixedStatistics(0.25, 256).spans(480, 1) == [(360, 480)]
    assert FixedStatistics(0.5, 8).spans(9, 3) == [(1, 3), (4, 6), (7, 9)]  # half of 3 iterations: 2
    assert FixedStatistics(0.0, 0).spans(480, 2) == []
    assert FixedStatistics(0.01, 3).spans(20, 2) == []  # a share of no whole iteration
    for bad in (-0.1, 1.0, True, "0.2"):
        with pytest.raises(ParameterError, match="bn_fixed"):
            FixedStatistics(bad, 3)
    with pytest.raises(ParameterError, match="bn_batches"):
        FixedStatistics(0.25, 0)
    with pytest.raises(ParameterError, match="ema"):
        FixedStatistics(0.25, 3, ema=0.9)
    with pytest.raises(ParameterError, match="bn_batches"):
        _tiny_trainer([blob_case(i, (6, 32, 32)) for i in range(4)], bn_fixed=0.3)


def _cycling(cases, **kw):
    """The tiny trainer on one stage of 16 iterations, a cosine schedule run twice."""
    stage = Stage("one", iterations=16, lr=1e-2, eval_every=8, schedule=cosine_cycles(16, 0.0, 2))
    return _tiny_trainer(cases, stages=[stage], bn_batches=3, **kw)


def test_the_end_of_each_cycle_trains_with_fixed_statistics_and_is_scored_with_them():
    cases = [blob_case(i, (6, 32, 32)) for i in range(4)]
    seen, means, copies = {}, {}, {}

    def record(trainer, event, info):
        if event == "iteration":
            it = trainer.state.stage_iteration
            means[it] = layer.running_mean.clone()
            if it in (7, 8, 12):  # inside the first share, at its end (the half copy), outside both
                copies[it] = {k: v.clone() for k, v in trainer.final_state().items()}

    trainer, net = _cycling(cases, bn_fixed=0.25, callbacks=[record])
    layer = batch_norms(net)[0]
    name = next(n for n, m in net.named_modules() if m is layer)
    net.register_forward_pre_hook(
        lambda m, a: seen.__setitem__(trainer.state.stage_iteration, layer.training) if m.training else None)
    trainer.fit()
    # steps 6, 7 and 14, 15 (the last quarter of each cycle of 8) normalise as evaluation does
    assert [it for it in range(16) if not seen[it]] == [6, 7, 14, 15]
    # the statistics measured where a share starts do not move in it, and move again after it
    assert torch.equal(means[7], means[8]) and not torch.equal(means[6], means[7])
    assert not torch.equal(means[8], means[9])
    assert torch.equal(means[15], means[16]) and torch.equal(layer.running_mean, means[16])
    # the network scored inside or at the end of a share keeps the statistics it trained with; outside
    # a share they are measured
    assert torch.equal(copies[7][f"{name}.running_mean"], means[7])
    assert torch.equal(copies[8][f"{name}.running_mean"], means[8])
    assert not torch.equal(copies[12][f"{name}.running_mean"], means[12])
    # at the end, not the statistics the final weights would measure
    again = {k: v.clone() for k, v in net.state_dict().items()}
    measure_batch_norm(trainer, net)
    assert not torch.equal(again[f"{name}.running_mean"], net.state_dict()[f"{name}.running_mean"])
    # without bn_fixed the same schedule trains every step with batch statistics
    seen.clear()
    plain, net0 = _cycling(cases)
    net0.register_forward_pre_hook(lambda m, a: seen.__setitem__(plain.state.stage_iteration, batch_norms(net0)[0]
                                                                 .training) if m.training else None)
    plain.fit()
    assert all(seen[it] for it in range(16))


def test_a_run_resumed_inside_a_fixed_share_ends_on_the_same_numbers(tmp_path):
    cases = [blob_case(i, (6, 32, 32)) for i in range(4)]
    whole, net_whole = _cycling(cases, bn_fixed=0.25)
    whole.fit()

    def kill(trainer, event, info):
        if event == "iteration" and info["iteration"] == 15:
            raise KeyboardInterrupt("killed")

    run = RunFolder.create(tmp_path, "smoke", "test", "fixed")
    trainer, _ = _cycling(cases, bn_fixed=0.25, run=run, callbacks=[kill], checkpoint_every=1)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(run.checkpoint_last)["state"]["iteration"] == 15  # inside the share (14, 16)
    trainer, net = _cycling(cases, bn_fixed=0.25, run=RunFolder.open(run.path))
    trainer.fit(resume=True)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in net_whole.state_dict().items())
