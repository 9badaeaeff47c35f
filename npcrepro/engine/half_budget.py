"""The half-budget copy: a Trainer handler that keeps the weights at half the budget, and the runner's
way back to them (the convergence check scores both)."""
from __future__ import annotations

__all__ = ["save_half_budget", "half_budget_model"]


def save_half_budget(trainer, event, info) -> None:
    """Trainer callback: keep the weights at half the trainer's budget as ``model_half.pt`` in its
    run folder (the runner scores them to show whether the network had converged). They are the
    weights the trainer would hand over if it stopped there (:meth:`Trainer.final_state`): the
    best-validation weights so far where it restores those at the end, the moving average where it
    averages (``ema``), so that half and full budget are picked by the same rule.

    With several stages (li2018's stepwise scheme, a warm-up stage), "half the budget" is the middle
    of the *last* stage: earlier stages train other outputs or a different objective, so the network
    halfway through the whole schedule is not yet the network that is scored."""
    if event != "iteration" or trainer.run is None or not trainer.run.writer:
        return
    last = len(trainer.stages) - 1
    middle = max(1, trainer.stage_budget(trainer.stages[last]) // 2)
    if info["stage"] == last and trainer.state.stage_iteration == middle:
        import torch

        torch.save(trainer.final_state(), trainer.run.path / "model_half.pt")


def half_budget_model(chapter, method, model, ctx):
    """The network as it was at half its budget (the newest ``model_half.pt`` of the job), or None
    when training ended before half its budget.

    The half-budget weights are those of the network the job's trainer trained: the whole final
    network, or one named part of it when the job trains only that part (guo2021's CSCN trains its
    ACDNet on a BUNet trained by another job); the other parts then keep their final weights."""
    import copy

    import torch

    def shapes(sd) -> dict:
        return {k: tuple(v.shape) for k, v in sd.items()}

    parts = {name: shapes(sub.state_dict()) for name, sub in model.named_modules()}
    for path in sorted(ctx.run.path.rglob("model_half.pt"), key=lambda p: p.stat().st_mtime, reverse=True):
        state = torch.load(path, map_location="cpu", weights_only=True)
        found = shapes(state)
        matches = [name for name, keys in parts.items() if keys and keys == found]
        if not matches or (matches[0] != "" and len(matches) > 1):  # none, or two alike parts
            continue
        part = matches[0]
        net = copy.deepcopy(model)
        net.get_submodule(part).load_state_dict(state)
        return net.eval()
    return None
