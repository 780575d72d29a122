"""MI-UE (intra-class feature collapse; Zhu et al., ICLR 2026):

  jaxprotect poison   --config experiments/mi_ue.py:<dataset>[,reference] --workdir DIR
  jaxprotect evaluate --config experiments/mi_ue.py:<same> --config.evaluate.poison=DIR --workdir DIR2

Reference bi-level loop: 100 outer iterations, each one CE epoch of the surrogate (SGD 0.1,
weight decay 1e-4, cosine over the run) then 10 sign-PGD steps on every batch descending
the MI-UE loss (temperature 0.1, self term included), step size 0.2/255 -> 0.4/255,
eps 8/255; no early stop. As in the reference generation command (--post-aug), the clean
images under the perturbation are randomly flipped in both phases (the perturbation does
not move with them), and the perturbation starts at zero. The PGD batches are visited in
a new order every outer iteration (``craft.reshuffle="auto"``: the MI-UE loss couples
the examples of a batch; ``--config.craft.reshuffle=never`` gives the fixed order of
earlier runs). Datasets (and models) as in experiments/em.py, whose config this file
starts from; sample-wise only. The CPU variants use 20 outer iterations. Victims as in
experiments/em.py. Fields are overridden as in experiments/em.py (e.g.
``--config.craft.mi_ue.temperature=0.5``).

``,reference``: every field as the authors' code sets it (hala64/mi-ue at
4cd387978c08b0c85eed9afc0b849d0b8777691c: the README's generation command with
gen_miue.py, and evaluation_sl.py for the victims; each value below cites its file and
line). Beyond the above it changes: the step size ends at 0.398/255 (the reference's
linear schedule reaches 0.4/255 one epoch after the last), 100 outer iterations on every
dataset, PGD batches of 512; victims train 200 epochs with SGD 0.5, weight decay 1e-4,
cosine (batch 128, crop 4 + flip, no gradient clip) on the poisoned images stored as
uint8 the way the reference does (``evaluate.quantize="floor"``). The Fashion-MNIST
variants take the CIFAR values and keep their models (small CNNs on the CPU variants).
The surrogate normalises its input by the ImageNet mean and standard deviation as the
reference's does (models/resnet.py:157-158, 230; ``model_kwargs.input_norm="imagenet"``)
where it is the ResNet-18 on 3-channel data; not on Fashion-MNIST, which has one channel.
Known differences left: the reference's cosine schedules step per epoch down to 1e-6 (here per step, to
0); a last partial PGD batch is filled with other examples as context (the reference's
is just smaller); the surrogate trains on clip(x + delta, 0, 1) (the reference on
x + delta, gen_miue.py:198); a poison_fraction < 1 poisons a random subset (the reference
the first examples, datasets/cifar.py:19-21).
"""

import pathlib

from jaxprotect import config

EM = pathlib.Path(__file__).with_name("em.py")
CPU_VARIANTS = ("fashion_mnist_mini", "fashion_mnist_cpu")  # 20 outer iterations
OPTIONS = ("reference",)


def get_config(arg: str | None = None):
  variant, *options = (arg or "fashion_mnist_mini").split(",")
  bad = [o for o in options if o not in OPTIONS]
  if bad:
    raise ValueError(f"unknown option(s) {bad} of experiments/mi_ue.py; use {', '.join(OPTIONS)} "
                     "(MI-UE crafts sample-wise)")
  c = config.from_file(f"{EM}:{variant}")  # checks the dataset variant
  c.craft.method = "mi_ue"
  c.craft.train_steps = 0  # one epoch
  c.craft.stop_error = 0.0
  c.craft.max_iterations = 20 if variant in CPU_VARIANTS else 100
  c.surrogate.optimizer.weight_decay = 1e-4
  c.surrogate.optimizer.grad_clip = 0.0
  c.surrogate.optimizer.schedule = "cosine"
  c.craft.pgd.steps = 10
  c.craft.pgd.step_size = 0.2 / 255
  c.craft.pgd.step_size_end = 0.4 / 255
  c.craft.clean_augment = "flip"
  c.craft.delta_init = "zeros"
  if "reference" in options:
    reference(c)
  return c


def reference(c) -> None:
  """Sets every field of ``c`` (an MI-UE config) to the value of hala64/mi-ue (commit
  4cd3879). File:line citations are of that repository; "README" is its generation
  command (``gen_miue.py --post-aug --epochs 100 --batch-size 128 --perturb-iters 10
  --alpha 0.2``) and evaluation command (``evaluation_sl.py --backbone resnet18``)."""
  # Surrogate: models/resnet.py resnet18 with the CIFAR stem (3x3 conv1, no max-pool; gen_miue.py:284-288
  # and models/resnet.py:172-175) and ImageNet input normalisation (models/resnet.py:157-158, 230). The
  # small CNNs stay on the CPU variants; Fashion-MNIST's one channel has no ImageNet statistics.
  s = c.surrogate
  if s.model == "resnet18" and not c.data.name.startswith("fashion_mnist"):
    s.model_kwargs.input_norm = "imagenet"  # models/resnet.py:157-158 NormalizeByChannelMeanStd, applied at 230
  s.batch_size = 128  # README --batch-size 128 (gen_miue.py:29 default 512), the train_loader of gen_miue.py:277
  s.augment = ""  # train_epoch adds no augmentation of its own (gen_miue.py:198); the flip is craft.clean_augment
  s.optimizer.name = "sgd"  # gen_miue.py:45 (--optimizer sgd), 309-310
  s.optimizer.lr = 0.1  # gen_miue.py:49 (--lr 0.1)
  s.optimizer.momentum = 0.9  # gen_miue.py:310
  s.optimizer.nesterov = False  # gen_miue.py:310
  s.optimizer.weight_decay = 1e-4  # gen_miue.py:310
  s.optimizer.schedule = "cosine"  # gen_miue.py:314-321 (cosine_annealing to 1e-6, stepped per epoch at 247)
  s.optimizer.grad_clip = 0.0  # no clipping in train_epoch (gen_miue.py:219-221)
  s.label_smoothing = 0.0  # F.cross_entropy (gen_miue.py:211)
  # (gen_miue.py:51 seeds torch with 7; a torch seed has no JAX counterpart, surrogate.seed stays.)
  k = c.craft
  k.method, k.mode = "mi_ue", "sample"  # gen_miue.py:323-325: one perturbation per training image
  k.eps = 8 / 255  # gen_miue.py:55, 72 (--epsilon 8, --poison-update-epsilon 8: eps at 339 is constant)
  k.delta_init = "zeros"  # gen_miue.py:325 torch.zeros
  # README --post-aug: dataloaders.py:80-88 with s = 0.0 -- RandomResizedCrop(32, scale=(1, 1)) returns the
  # whole image, RandomHorizontalFlip(0.5), jitter and grayscale with p = 0 -- in both phases (the poison
  # loader is the same dataset, gen_miue.py:275-280; aug is the identity, 343-344).
  k.clean_augment = "flip"
  k.pgd.steps = 10  # README --perturb-iters 10 (gen_miue.py:43)
  k.pgd.step_size = 0.2 / 255  # README --alpha 0.2 (gen_miue.py:37, 83)
  # gen_miue.py:340-341: alpha(epoch) = (E - epoch + 1) / E * (0.2 - 0.4) / 255 + 0.4 / 255 for epoch = 1..E,
  # linear from 0.2/255 to (0.4 - 0.2 / E) / 255 = 0.398/255 at E = 100.
  k.pgd.step_size_end = (0.4 - 0.2 / 100) / 255
  k.pgd.batch_size = 512  # gen_miue.py:30 (--poison-batch-size 512), the poison_train_loader of 280
  k.reshuffle = "always"  # dataloaders.py:50 DataLoader(shuffle=True): a new batch order every epoch
  k.train_steps = 0  # one epoch of the surrogate per outer iteration (gen_miue.py:193, train_epoch)
  k.max_iterations = 100  # README --epochs 100 (gen_miue.py:47, 338)
  k.stop_error = 0.0  # no stop rule: all epochs run (gen_miue.py:338)
  k.mi_ue.temperature = 0.1  # gen_miue.py:35 (--temperature 0.1)
  k.mi_ue.exclude_self = False  # utils.py nt_xent: both sums run over every j, i included (sim_matrix, mask)
  k.mi_ue.zeta = 0.0  # gen_miue.py:74 (--zeta 0.0): nt_xent_l2 = nt_xent + 0 * l2sim (gen_miue.py:122-123)
  # Victim: evaluation_sl.py with torchvision's resnet18, CIFAR stem (evaluation_sl.py:146-150), no
  # input normalisation -- the zoo's resnet18.
  v = c.victim
  v.epochs = 200  # evaluation_sl.py:40 (--epochs 200)
  v.batch_size = 128  # evaluation_sl.py:30 (--batch-size 128)
  v.optimizer.name = "sgd"  # evaluation_sl.py:38, 181-182
  v.optimizer.lr = 0.5  # evaluation_sl.py:42 (--lr 0.5)
  v.optimizer.momentum = 0.9  # evaluation_sl.py:182
  v.optimizer.nesterov = False  # evaluation_sl.py:182
  v.optimizer.weight_decay = 1e-4  # evaluation_sl.py:182
  v.optimizer.schedule = "cosine"  # evaluation_sl.py:186-193 (cosine_annealing to 1e-6, per epoch at 111)
  v.optimizer.grad_clip = 0.0  # no clipping (evaluation_sl.py:95-97)
  v.augment = "crop4,flip"  # dataloaders.py:104-106 RandomCrop(32, 4) + RandomHorizontalFlip(0.5)
  v.label_smoothing = 0.0  # F.cross_entropy (evaluation_sl.py:94)
  e = c.evaluate
  e.quantize = "floor"  # datasets/cifar.py:30-31: np.clip(data.astype(np.float32) + 255 delta, 0, 255).astype(np.uint8)
  e.drop_negative = False  # the whole perturbation is added (datasets/cifar.py:30-31)
