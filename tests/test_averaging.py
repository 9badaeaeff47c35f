"""The moving average of the weights (Trainer ``ema``): hand-computed values, the final network, resume."""
import pytest
import torch

from npcrepro.engine import RunFolder
from npcrepro.engine.averaging import WeightAverage
from npcrepro.engine.loop import load_checkpoint
from npcrepro.engine.validation import validation_loss
from npcrepro.errors import ParameterError
from test_engine import _tiny_trainer, blob_case


def test_average_matches_a_hand_computed_sequence():
    net = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(0.0)
    avg = WeightAverage(net, decay=0.5)
    expected, values = 0.0, [1.0, 2.0, 4.0]
    for n, v in enumerate(values):
        with torch.no_grad():
            net[0].weight.fill_(v)
            net[1].num_batches_tracked.fill_(n + 7)
        d = min(0.5, (1 + n) / (10 + n))  # warm-up: 0.1, 2/11, 0.25 (0.5 from the 9th update)
        expected = d * expected + (1 - d) * v
        avg.update(net)
    assert avg.updates == 3
    assert avg.weights["0.weight"].item() == pytest.approx(expected, rel=1e-6)
    assert avg.weights["1.num_batches_tracked"].item() == 9  # integer buffers are copied
    # by hand: 0.9 * 1 = 0.9; 2/11 * 0.9 + 9/11 * 2 = 1.8; 0.25 * 1.8 + 0.75 * 4 = 3.45
    assert avg.weights["0.weight"].item() == pytest.approx(3.45, rel=1e-6)


def test_bad_decay_is_refused():
    net = torch.nn.Linear(1, 1)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ParameterError, match="decay"):
            WeightAverage(net, bad)
    cases = [blob_case(i, (6, 32, 32)) for i in range(4)]
    with pytest.raises(ParameterError, match="ema"):
        _tiny_trainer(cases, ema=1.0)
    from npcrepro import profiles

    for bad in (1.0, -0.5):  # the leaderboard's parameter is refused before anything runs
        with pytest.raises(ParameterError, match="'ema'"):
            profiles.resolve("leaderboard", "cpu", ema=bad)
    assert profiles.resolve("leaderboard", "cpu", ema=0.98)["ema"] == 0.98


@pytest.fixture(scope="module")
def cases():
    return [blob_case(i, (6, 32, 32)) for i in range(4)]


def _one_stage():
    from npcrepro.engine import Stage

    return [Stage("train", iterations=12, lr=1e-2, eval_every=4)]


def test_final_network_is_the_average_and_differs_from_the_last_step(cases, tmp_path):
    seen = {}

    def spy(trainer, event, info):
        if event == "iteration" and info["iteration"] == 12:
            seen["raw"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
            seen["avg"] = {k: v.clone() for k, v in trainer.scored_state().items()}

    run = RunFolder.create(tmp_path, "smoke", "test", "ema")
    trainer, model = _tiny_trainer(cases, run=run, stages=_one_stage(), callbacks=[spy], ema=0.9,
                                   restore_best=False)
    trainer.fit()
    final = model.state_dict()
    assert all(torch.equal(final[k], seen["avg"][k]) for k in final)
    assert any(not torch.equal(seen["raw"][k], seen["avg"][k]) for k in final if final[k].is_floating_point())
    # without ema the scored weights are the model's own
    plain, model2 = _tiny_trainer(cases, stages=_one_stage(), restore_best=False)
    plain.fit()
    assert plain.average is None and plain.scored_state() is not None
    assert all(torch.equal(a, b) for a, b in zip(plain.scored_state().values(), model2.state_dict().values()))


def test_resume_after_kill_keeps_the_average(cases, tmp_path):
    ref_run = RunFolder.create(tmp_path, "smoke", "test", "ref")
    trainer, ref_model = _tiny_trainer(cases, run=ref_run, stages=_one_stage(), ema=0.9, restore_best=False)
    trainer.fit()

    def kill(trainer, event, info):
        if event == "iteration" and info["iteration"] == 6:
            raise KeyboardInterrupt("killed")

    run = RunFolder.create(tmp_path, "smoke", "test", "killed")
    trainer, _ = _tiny_trainer(cases, run=run, stages=_one_stage(), ema=0.9, restore_best=False,
                               callbacks=[kill])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    ck = load_checkpoint(run.checkpoint_last)
    assert ck["average"]["updates"] == 4  # saved at the evaluation of iteration 4
    trainer, model = _tiny_trainer(cases, run=RunFolder.open(run.path), stages=_one_stage(), ema=0.9,
                                   restore_best=False)
    trainer.fit(resume=True)
    ref = ref_model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in model.state_dict().items())


def test_validation_and_best_weights_are_the_average(cases, tmp_path):
    """With ``ema``, the validation loss is the averaged network's, and the best-validation weights
    restored at the end are averaged ones (also when read back from checkpoint_best.pt)."""
    from npcrepro.engine import Stage

    stages = [Stage("train", iterations=12, lr=1e-2, eval_every=4)]
    trainer, model = _tiny_trainer(cases, run=RunFolder.create(tmp_path, "smoke", "test", "best"),
                                   stages=stages, ema=0.9, restore_best=True)
    seen = []

    def spy(tr, event, info):
        if event == "evaluation":
            raw = {k: v.clone() for k, v in tr.model.state_dict().items()}
            tr.model.load_state_dict(tr.average.weights)
            want = validation_loss(tr, tr.val_data, None)
            tr.model.load_state_dict(raw)
            seen.append((info["val_loss"], want, tr.state.best_iteration == info["iteration"],
                         {k: v.clone() for k, v in tr.average.weights.items()}))

    trainer.callbacks.append(spy)
    trainer.fit()
    assert all(got == pytest.approx(want, rel=1e-6) for got, want, _, _ in seen)
    best = [w for _, _, is_best, w in seen if is_best][-1]
    assert all(torch.equal(best[k], v) for k, v in model.state_dict().items())
    ck = load_checkpoint(trainer.run.path / "checkpoint_best.pt")
    assert all(torch.equal(best[k], v) for k, v in ck["average"]["weights"].items())
