"""Template: one method, a 2D U-Net trained with soft Dice + BCE by the shared Trainer."""
from __future__ import annotations

import torch.nn.functional as F

from npcrepro.chapters.template.prepare import training_slices
from npcrepro.engine.experiment import Chapter, Method
from npcrepro.losses import DiceLoss


def dice_bce(logits, target):
    """Soft Dice (eps 1) + binary cross-entropy on logits (N, 1, y, x)."""
    return DiceLoss(eps=1.0)(logits, target) + F.binary_cross_entropy_with_logits(logits, target)


class Template(Chapter):
    name = "template"
    channels = ()
    structures = ("GTVp",)

    def channels_for(self, P, dataset=None):
        return (str(P["channel"]),)

    def methods(self, P):
        return [Method("unet2d", "2D U-Net", info={"widths": list(P["widths"])})]

    def load(self, dataset, name, P):
        return dataset.load(name, channels=[P["channel"]], structures=[P["structure"]])

    def build(self, method, P):
        from npcrepro.models import build

        return build("unet2d", in_channels=1, n_classes=1, widths=list(P["widths"]))

    def prepare(self, case, P):
        return case

    def fit(self, method, train, val, ctx):
        from npcrepro.engine import Trainer

        P = ctx.P
        model = self.build(method, P)
        iters = int(P["iterations"])
        trainer = Trainer(model, dice_bce, training_slices(train, P), val_data=training_slices(val, P, train=False),
                          batch_size=int(P["batch_size"]), iterations=iters, eval_every=int(P["eval_every"]),
                          optimizer="adam", lr=float(P["lr"]),
                          schedule={"kind": "exponential", "every": max(1, iters // 4), "gamma": 0.5},
                          restore_best=True, **ctx.trainer_args())
        history = ctx.fit(trainer)
        ctx.facts.update(iterations=history.iterations, best_val_loss=history.best_val_loss)
        return model

    def predict(self, method, model, case, ctx):
        from npcrepro.engine import predict_case

        P = ctx.P
        prob = predict_case(model, case, [P["channel"]], mode="2d", device=ctx.device)[0]
        return {P["structure"]: prob}


CHAPTER = Template()
