"""Batch-norm statistics measured over training batches (Trainer ``bn_batches``): the population mean
and variance against numpy, a deeper network against its own training-mode output, the trainer's
final and half-budget weights."""
import numpy as np
import pytest
import torch

from npcrepro.engine.batchnorm import batch_norms, measure_batch_norm, population_statistics
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
