"""Mask R-CNN (He et al., ICCV 2017) from torchvision, adapted to per-structure semantic masks of 2D CT.

The "Mask R-CNN" row of luo2020's Table 1. Mask R-CNN is an *instance* model: it is trained on boxes,
class labels and one mask per object, and predicts a list of scored detections. This module turns
the book's data (slices and one binary mask per structure) into that form and back:

* **targets** (:func:`masks_to_target`): each structure present on a slice is one instance of class
  ``k + 1`` (0 is background), its box the tight box of its pixels, its mask the structure's mask.
  ``instances="components"`` makes each connected component its own instance instead (a bilateral
  CTVnd becomes two objects). Slices with no instance are left out of training (Mask R-CNN's losses
  need at least one object per image);
* **prediction** (:meth:`MaskRCNNSegmenter.predict`): every detection whose score reaches
  ``score_threshold`` pastes its mask probabilities (torchvision already pastes them at image size)
  into its class's map, the maximum over instances; the result is one probability map per
  structure, ``(N, K, H, W)``, like every other network of the chapter, thresholded at
  ``mask_threshold`` (0.5) for hard masks.

The network is torchvision's ``MaskRCNN`` with a ResNet-FPN backbone, **trained from scratch**
(``weights=None, weights_backbone=None``): torchvision's COCO/ImageNet weights cannot be downloaded
here. Without pretrained weights torchvision uses ordinary (trainable) BatchNorm in the backbone and
trains every layer; this module does the same for every backbone. ``backbone="resnet50"`` with
``channels=256, representation=1024`` is exactly ``maskrcnn_resnet50_fpn`` (the gpu profiles). On
the CPU the cost is in the heads, not the trunk: the four 256-channel mask-head convolutions on
every positive RoI and the 1024-wide box head on 512 sampled RoIs per image make one step of 4
slices of 96 x 80 pixels take about 10 s on one thread of a busy 2-core machine, with ResNet-18 as
with ResNet-50. The smoke and cpu profiles therefore use the same architecture narrower: a ResNet-18
trunk, FPN and mask head at 64 channels, box head 256 wide, fewer RPN proposals and sampled RoIs
(about 1 s per step there). Other choices for small CT slices:

* the first convolution reads one channel (windowed CT), normalised by ``image_mean``/``image_std``;
* images are not resized: the internal transform's ``min_size``/``max_size`` are set from the slice
  size times ``upscale`` (torchvision's default would upsample every slice to 800 pixels);
* anchors 8-128 pixels (one size per FPN level) instead of 32-512, for organs of a few to a hundred
  pixels on 64-512 pixel slices.

torchvision is imported lazily, so ``import npcrepro.models.maskrcnn`` works where it is absent;
:func:`available` tells whether it imports. It is an optional extra (``pip install
npcrepro[maskrcnn]``, which needs torch 2.14.1 and so lives in its own environment: see
``scripts/setup_maskrcnn_env.sh``).
"""
from __future__ import annotations

import importlib.util
import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from npcrepro.errors import DataError, ParameterError

__all__ = ["available", "boxes_from_masks", "masks_to_target", "build_maskrcnn", "MaskRCNNSegmenter",
           "BACKBONES", "ENABLE_HINT"]

#: Backbones :func:`build_maskrcnn` accepts (torchvision ResNets with an FPN).
BACKBONES = ("resnet18", "resnet34", "resnet50")

#: How to get torchvision where it is missing (one line, for messages).
ENABLE_HINT = ("run `bash scripts/setup_maskrcnn_env.sh` (a separate venv with torch 2.14.1 + torchvision "
               "0.29.1), then run the chapter with that venv's kernel or `npcrepro run luo2020` from it")


def available() -> bool:
    """True when torchvision can be imported (checked without importing it when it is absent)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install (e.g. a torch/torchvision mismatch) is "absent"
        return False
    return True


def _require():
    if not available():
        raise ParameterError(f"Mask R-CNN needs torchvision, which does not import here: {ENABLE_HINT}")


# ----------------------------------------------------------------------------------- targets
def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks: (M, H, W) -> (M, 4) float32 ``(x1, y1, x2, y2)`` in pixel-edge
    coordinates (pixel (y, x) covers [x, x + 1) x [y, y + 1)), so a one-pixel mask has a 1 x 1 box;
    torchvision's ``masks_to_boxes`` returns pixel centres instead, a zero-area box for a one-pixel-wide
    mask, which the detector rejects. Every mask must have at least one pixel."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise DataError(f"boxes_from_masks: masks must be (M, H, W), got shape {masks.shape}")
    out = np.zeros((len(masks), 4), np.float32)
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if not len(ys):
            raise DataError(f"boxes_from_masks: mask {i} is empty")
        out[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def masks_to_target(masks: np.ndarray, instances: str = "structure") -> dict[str, np.ndarray]:
    """One slice's structure masks (K, H, W) -> Mask R-CNN target as numpy arrays: ``boxes`` (M, 4)
    float32 (:func:`boxes_from_masks`), ``labels`` (M,) int64 (structure k is class k + 1), ``masks``
    (M, H, W) uint8. ``instances``: ``"structure"`` (each present structure is one instance) or
    ``"components"`` (each 8-connected component is one). M = 0 for a slice without any structure."""
    masks = np.asarray(masks, bool)
    if masks.ndim != 3:
        raise DataError(f"masks_to_target: masks must be (K, H, W), got shape {masks.shape}")
    if instances not in ("structure", "components"):
        raise ParameterError(f"instances must be 'structure' or 'components', got {instances!r}")
    inst, labels = [], []
    for k, m in enumerate(masks):
        if not m.any():
            continue
        if instances == "structure":
            inst.append(m)
            labels.append(k + 1)
        else:
            from scipy import ndimage

            lab, n = ndimage.label(m, structure=np.ones((3, 3), bool))
            for j in range(1, n + 1):
                inst.append(lab == j)
                labels.append(k + 1)
    h, w = masks.shape[1:]
    if not inst:
        return {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64),
                "masks": np.zeros((0, h, w), np.uint8)}
    stack = np.stack(inst)
    return {"boxes": boxes_from_masks(stack), "labels": np.asarray(labels, np.int64),
            "masks": stack.astype(np.uint8)}


# ----------------------------------------------------------------------------------- network
def build_maskrcnn(n_structures: int, image_size: Sequence[int], *, backbone: str = "resnet18",
                   channels: int = 256, representation: int = 1024, upscale: float = 1.0,
                   anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128), image_mean: float = 0.5,
                   image_std: float = 0.25, score_threshold: float = 0.5, detections_per_img: int = 100,
                   **kwargs):
    """torchvision ``MaskRCNN`` for one-channel slices of ``image_size`` (H, W) pixels and
    ``n_structures`` classes (+ background), from scratch (no pretrained weights).

    ``channels``: width of the FPN and of the four mask-head convolutions (torchvision: 256);
    ``representation``: width of the two-layer box head (torchvision: 1024). With ``backbone=
    "resnet50"``, 256 and 1024 the network is ``maskrcnn_resnet50_fpn(weights=None,
    weights_backbone=None)`` itself; otherwise the same parts (ResNet trunk with trainable BatchNorm,
    FPN with a max-pooled fifth level, RPN, RoIAlign box and mask heads) at the given widths.
    ``kwargs`` go to ``MaskRCNN`` (e.g. ``rpn_post_nms_top_n_train``, ``box_batch_size_per_image``).
    """
    _require()
    from torch import nn
    from torchvision.models import resnet
    from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if backbone not in BACKBONES:
        raise ParameterError(f"Mask R-CNN backbone must be one of {BACKBONES}, got {backbone!r}")
    if n_structures < 1:
        raise ParameterError(f"n_structures must be >= 1, got {n_structures}")
    if len(anchor_sizes) != 5:
        raise ParameterError(f"anchor_sizes needs one size per FPN level (5), got {tuple(anchor_sizes)}")
    if int(channels) < 1 or int(representation) < 1 or upscale <= 0:
        raise ParameterError(f"channels, representation and upscale must be positive, got {channels}, "
                             f"{representation}, {upscale}")
    h, w = (int(s) for s in image_size)
    anchors = AnchorGenerator(sizes=tuple((int(a),) for a in anchor_sizes), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    common = dict(min_size=round(min(h, w) * upscale), max_size=round(max(h, w) * upscale),
                  image_mean=[float(image_mean)], image_std=[float(image_std)], rpn_anchor_generator=anchors,
                  box_score_thresh=float(score_threshold), box_detections_per_img=int(detections_per_img),
                  **kwargs)
    n_classes = int(n_structures) + 1
    if backbone == "resnet50" and int(channels) == 256 and int(representation) == 1024:
        model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=n_classes, **common)
        old = model.backbone.body.conv1
        model.backbone.body.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding,
                                              bias=False)
        nn.init.kaiming_normal_(model.backbone.body.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model
    c, r = int(channels), int(representation)
    trunk = getattr(resnet, backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    trunk.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
    stage2 = trunk.inplanes // 8  # channels of layer1's output (64 for ResNet-18/34, 256 for -50)
    fpn = BackboneWithFPN(trunk, {f"layer{i}": str(i - 1) for i in range(1, 5)},
                          [stage2 * 2 ** i for i in range(4)], c, extra_blocks=LastLevelMaxPool())
    return MaskRCNN(fpn, num_classes=None, box_head=TwoMLPHead(c * 7 * 7, r),
                    box_predictor=FastRCNNPredictor(r, n_classes), mask_head=MaskRCNNHeads(c, [c] * 4, 1),
                    mask_predictor=MaskRCNNPredictor(c, c, n_classes), **common)


class MaskRCNNSegmenter:
    """Train torchvision's Mask R-CNN on slices with one binary mask per structure; predict one
    probability map per structure.

    Parameters
    ----------
    n_structures:
        K, the number of structures (classes 1..K; 0 is background).
    image_size:
        (H, W) of the slices in pixels (all slices of one segmenter have this size).
    backbone, channels, representation, upscale, anchor_sizes, image_mean, image_std,
    detections_per_img, **model_kwargs:
        see :func:`build_maskrcnn`.
    score_threshold:
        detections below this score are dropped before pasting (also the model's ``box_score_thresh``).
    mask_threshold:
        probability at which :meth:`predict_masks` cuts the pasted maps.
    instances:
        ``"structure"`` or ``"components"`` (:func:`masks_to_target`).
    seed:
        seeds the initialisation and the order of training slices.
    device:
        torch device (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, n_structures: int, image_size: Sequence[int], *, backbone: str = "resnet18",
                 channels: int = 256, representation: int = 1024, upscale: float = 1.0, anchor_sizes: Sequence[int] = (8, 16, 32, 64, 128),
                 image_mean: float = 0.5, image_std: float = 0.25, score_threshold: float = 0.5,
                 mask_threshold: float = 0.5, detections_per_img: int = 100, instances: str = "structure",
                 seed: int = 0, device: str = "cpu", **model_kwargs):
        _require()
        import torch

        if not 0 <= score_threshold <= 1 or not 0 < mask_threshold < 1:
            raise ParameterError(f"score_threshold must be in [0, 1] and mask_threshold in (0, 1), got "
                                 f"{score_threshold}, {mask_threshold}")
        if instances not in ("structure", "components"):
            raise ParameterError(f"instances must be 'structure' or 'components', got {instances!r}")
        self.n_structures = int(n_structures)
        self.image_size = tuple(int(s) for s in image_size)
        self.score_threshold = float(score_threshold)
        self.mask_threshold = float(mask_threshold)
        self.instances = instances
        self.seed = int(seed)
        self.device = torch.device(device)
        self.backbone = backbone
        torch.manual_seed(self.seed)
        self.model = build_maskrcnn(self.n_structures, self.image_size, backbone=backbone, channels=channels,
                                    representation=representation, upscale=upscale,
                                    anchor_sizes=anchor_sizes, image_mean=image_mean, image_std=image_std,
                                    score_threshold=score_threshold, detections_per_img=detections_per_img,
                                    **model_kwargs).to(self.device)

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1] != 1:
            raise DataError(f"Mask R-CNN: images must be (N, 1, H, W), got shape {images.shape}")
        if tuple(images.shape[2:]) != self.image_size:
            raise DataError(f"Mask R-CNN: slices are {tuple(images.shape[2:])}, the model was built for "
                            f"{self.image_size}")
        if not np.isfinite(images).all():
            raise DataError("Mask R-CNN: images contain non-finite values")
        return images

    def targets(self, masks: np.ndarray) -> list[dict[str, np.ndarray]]:
        """(N, K, H, W) masks -> one target per slice (:func:`masks_to_target`)."""
        masks = np.asarray(masks, bool)
        if masks.ndim != 4 or masks.shape[1] != self.n_structures:
            raise DataError(f"Mask R-CNN: masks must be (N, {self.n_structures}, H, W), got {masks.shape}")
        return [masks_to_target(m, self.instances) for m in masks]

    # ------------------------------------------------------------------ training
    def fit(self, images: np.ndarray, masks: np.ndarray, *, iterations: int, batch_size: int = 4,
            lr: float = 0.01, optimizer: str = "sgd", weight_decay: float = 1e-4, warmup: int | None = None,
            lr_gamma: float = 0.9, lr_decays: int = 10, grad_clip: float | None = 10.0,
            log: Callable[[str], Any] | None = None, log_every: int = 50) -> dict:
        """Train on slices ``images`` (N, 1, H, W) float32 (the chapter's windowed CT in [0, 1]) with
        ``masks`` (N, K, H, W) bool. Slices with no structure are left out. Batches of
        ``batch_size`` slices drawn in shuffled epochs for ``iterations`` steps; SGD (momentum 0.9)
        or Adam at ``lr`` with a linear warm-up over ``warmup`` steps (default: a tenth of the run, at
        most 100) and ``lr_decays`` decays of x``lr_gamma`` spread over the run; gradients clipped
        to norm ``grad_clip``.

        Returns ``{"iterations", "train_slices", "skipped_slices", "seconds", "losses"`` (total loss
        per step), ``"final_train_loss"`` (mean of the last 10 %), ``"loss_parts"`` (mean of each of
        torchvision's five losses over the last 10 %)}``.
        """
        import torch

        images = self._check_images(images)
        targets = self.targets(masks)
        if len(targets) != len(images):
            raise DataError(f"Mask R-CNN: {len(images)} images but {len(targets)} mask stacks")
        keep = [i for i, t in enumerate(targets) if len(t["labels"])]
        if not keep:
            raise DataError("Mask R-CNN: no training slice contains a structure")
        iterations, batch_size = int(iterations), int(batch_size)
        if iterations < 1 or batch_size < 1:
            raise ParameterError(f"iterations and batch_size must be >= 1, got {iterations}, {batch_size}")
        params = [p for p in self.model.parameters() if p.requires_grad]
        if optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
        elif optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        else:
            raise ParameterError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")
        warm = min(100, iterations // 10) if warmup is None else int(warmup)
        every = max(1, iterations // max(1, int(lr_decays)))

        def factor(t: int) -> float:
            w = (t + 1) / warm if t < warm else 1.0
            return w * lr_gamma ** (t // every)

        dev = self.device
        t_img = [torch.from_numpy(images[i]).to(dev) for i in keep]
        t_tgt = [{"boxes": torch.from_numpy(targets[i]["boxes"]).to(dev),
                  "labels": torch.from_numpy(targets[i]["labels"]).to(dev),
                  "masks": torch.from_numpy(targets[i]["masks"]).to(dev)} for i in keep]
        rng = np.random.default_rng(self.seed)
        order: list[int] = []
        losses, parts = [], []
        self.model.train()
        t0 = time.perf_counter()
        for t in range(iterations):
            if len(order) < batch_size:
                order += list(rng.permutation(len(keep)))
            batch, order = order[:batch_size], order[batch_size:]
            for g in opt.param_groups:
                g["lr"] = lr * factor(t)
            loss_dict = self.model([t_img[i] for i in batch], [t_tgt[i] for i in batch])
            loss = sum(loss_dict.values())
            if not torch.isfinite(loss):
                raise DataError(f"Mask R-CNN: non-finite loss at iteration {t} "
                                f"({ {k: float(v) for k, v in loss_dict.items()} }); lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, float(grad_clip))
            opt.step()
            losses.append(loss.item())
            parts.append({k: v.item() for k, v in loss_dict.items()})
            if log and (t + 1) % max(1, int(log_every)) == 0:
                log(f"Mask R-CNN iteration {t + 1}/{iterations}: loss {np.mean(losses[-log_every:]):.3f} "
                    f"({time.perf_counter() - t0:.0f} s)")
        tail = max(1, math.ceil(len(losses) / 10))
        return {"iterations": iterations, "train_slices": len(keep), "skipped_slices": len(images) - len(keep),
                "seconds": time.perf_counter() - t0, "losses": losses,
                "final_train_loss": float(np.mean(losses[-tail:])),
                "loss_parts": {k: float(np.mean([p[k] for p in parts[-tail:]])) for k in parts[-1]}}

    # ------------------------------------------------------------------ prediction
    def detect(self, images: np.ndarray, batch_size: int = 8) -> list[dict[str, np.ndarray]]:
        """torchvision's raw detections per slice: ``boxes`` (M, 4), ``labels`` (M,) (class k + 1 =
        structure k), ``scores`` (M,), ``masks`` (M, H, W) float32 probabilities pasted at slice size.
        Only detections scoring at least ``score_threshold`` are kept."""
        import torch

        images = self._check_images(images)
        self.model.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), int(batch_size)):
                batch = [torch.from_numpy(x).to(self.device) for x in images[s:s + int(batch_size)]]
                for d in self.model(batch):
                    keep = d["scores"] >= self.score_threshold
                    out.append({"boxes": d["boxes"][keep].cpu().numpy(), "labels": d["labels"][keep].cpu().numpy(),
                                "scores": d["scores"][keep].cpu().numpy(),
                                "masks": d["masks"][keep][:, 0].float().cpu().numpy()})
        return out

    def predict(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Probability maps (N, K, H, W) float32 in [0, 1] for slices (N, 1, H, W): per structure, the
        maximum over its detections (score >= ``score_threshold``) of their pasted mask
        probabilities; 0 where none was detected."""
        images = self._check_images(images)
        prob = np.zeros((len(images), self.n_structures) + self.image_size, np.float32)
        for n, d in enumerate(self.detect(images, batch_size)):
            for label, m in zip(d["labels"], d["masks"]):
                k = int(label) - 1
                if 0 <= k < self.n_structures:
                    np.maximum(prob[n, k], m, out=prob[n, k])
        return prob

    def predict_masks(self, images: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Binary maps (N, K, H, W) bool: :meth:`predict` >= ``mask_threshold``."""
        return self.predict(images, batch_size) >= self.mask_threshold

    def parameters_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
