"""Defenses against unlearnable examples: what a data user can do to learn from protected data.

* ``augment`` -- training-time augmentations inside jit: MixUp (Zhang et al., ICLR 2018),
  CutMix (Yun et al., ICCV 2019) with soft labels, random resized crop, and UEraser's
  heavy random augmentations with max-loss selection over copies (Qin et al., "Learning
  the Unlearnable: Adversarial Augmentations Suppress Unlearnable Example Attacks", ICCV
  2023 Workshop AROW);
* ``iss`` -- image shortcut squeezing, host passes over the uint8 training images: JPEG,
  grayscale, bit-depth reduction, Gaussian blur (Liu, Zhao & Larson, "Image Shortcut
  Squeezing: Countering Perturbative Availability Poisons with Compression", ICML 2023);
* ``adversarial`` -- adversarial training (Madry et al., ICLR 2018): the PGD inner attack
  with BatchNorm in evaluation mode; ``as_hook`` turns a keyed transform of the batch that
  sees the training state into the engine's state hook (``train.with_state``), the hook
  every training-time defense here uses, and ``make_defended_train_step`` is the engine's
  step with it;
* ``defense`` -- a defense chosen by name (``Defense``, ``from_config``, the ``defense``
  config section): what ``runner.fit(..., defense=...)`` and the victims of
  ``unlearnable.evaluate`` train under.

Images inside jit are float ``B x H x W x C`` in [0, 1], as everywhere in the engine; the
squeezing functions take and return uint8 ``N x H x W x C`` arrays.
"""

from jaxprotect.defenses import adversarial, augment, defense, iss
from jaxprotect.defenses.adversarial import (DEFENSE_STREAM, adversarial_transform, as_hook,
                                             make_adversarial_train_step, make_defended_train_step, pgd_attack)
from jaxprotect.defenses.augment import (UEraserConfig, as_transform, cutmix, max_loss_select, mix_transform, mixup,
                                         random_resized_crop_batch, soft_cross_entropy, soft_label_loss,
                                         ueraser_copies, ueraser_loss, ueraser_transform)
from jaxprotect.defenses.defense import NAMES, Defense, defense_config, from_config
from jaxprotect.defenses.iss import bit_depth, gaussian_blur, grayscale, jpeg, squeeze, squeeze_dataset

__all__ = [
    "DEFENSE_STREAM", "NAMES", "Defense", "UEraserConfig", "adversarial", "adversarial_transform", "as_hook",
    "as_transform", "augment", "bit_depth", "cutmix", "defense", "defense_config", "from_config", "gaussian_blur",
    "grayscale", "iss", "jpeg", "make_adversarial_train_step", "make_defended_train_step",
    "max_loss_select", "mix_transform", "mixup", "pgd_attack", "random_resized_crop_batch", "soft_cross_entropy",
    "soft_label_loss", "squeeze", "squeeze_dataset", "ueraser_copies", "ueraser_loss", "ueraser_transform",
]
