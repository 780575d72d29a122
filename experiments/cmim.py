"""Undistillable teachers (CMIM, Nasty, CE) and knock-off students (Ye et al. 2025; Ma et al., ICLR 2021).

  jaxprotect distill teacher --config experiments/cmim.py:<variant>[,<method>] --workdir T
  jaxprotect distill attack  --config experiments/cmim.py:<variant> --config.attacks.teacher=T --workdir A
  jaxprotect distill report  --workdir R --runs A1,A2,...

``<method>`` (or ``--config.method``) is ``ce``, ``nasty`` or ``cmim`` (default).

Sections (``jaxprotect.distill.distill_config``): ``data``, ``teacher`` (the teacher model
and recipe), ``method``, ``cmim``, ``nasty``, ``curve``, ``student`` (every student's model
and recipe), ``attacks`` (the teacher directory, the attacks and seeds) and ``runtime``.
Override a field with ``--config.<section>.<field>=<value>``, e.g.
``--config.teacher.epochs=5 --config.teacher.model_kwargs.width=16 --config.cmim.lam=0.2
--config.student.epochs=5 --config.attacks.seeds=(0,1,2) --config.runtime.progress=False
--config.runtime.num_devices=1 --config.data.train_subset=1024``.

Variants:
  fashion_mnist_mini  embedded 10k/2k Fashion-MNIST slice (offline): small CNN teacher
                      (width 32), small CNN students (width 16) -- the quick CPU setting
  fashion_mnist       full Fashion-MNIST (60k/10k IDX files; data.dir defaults to
                      ../shared/data/fashion-mnist beside the clone): small CNN teacher
                      (width 32), small CNN students (width 16)
  fashion_mnist_resnet18  the issue's setting: ResNet-18 teachers on full Fashion-MNIST
                      (a GPU job), small CNN students
  cifar10             ResNet-18 teacher (160 epochs, SGD 0.1 x0.1 at 80/120) -> small CNN
                      student (Adam 1e-3, 100 epochs), the Nasty Teacher code's CIFAR-10
                      pair; Nasty tau 4 / omega 0.04, KD alpha 0.9 T 4
  cifar100            the CIFAR-100 KD recipe (SGD 0.9, wd 5e-4, 240 epochs, lr 0.05 x0.1 at
                      150/180/210, batch 64, crop+flip): ResNet-50 teacher -> ResNet-18 student;
                      Nasty tau 20 / omega 0.005, KD T 20, DKD alpha 1 beta 8 T 4 warm-up 20

Choices where the papers are silent (see jaxprotect/distill docstrings): CMI temperatures
{1, ..., 32} with T^2 weights and the mean over the grid; ``cmim.decay`` 0.99 -- the
MCMI code's 0.9999 is meant for a pretrained model, and from scratch it would leave the
centroids at the random initial model's near-uniform outputs for thousands of steps;
``cmim.lam`` is to be swept (0.1 .. 5). Skeptical student: KD delay 10% of the student's
epochs (``attacks.skeptical.delay_epochs=-1``); hard-label KD alpha 0.5; logit MSE without
CE; the students of the Fashion-MNIST variants clip the gradient norm at 5 (all of them, so
baselines and knock-offs share one recipe).

Students: every variant's students are CNNs or ResNets, as in the papers (the Nasty Teacher,
DKD and Skeptical-student papers distill into CNN/ResNet students). The Skeptical student's shallow and
layer-3 heads need two distinct feature layers (small CNN: conv0 and conv1; an MLP needs
at least three hidden layers, and ``distill attack`` refuses a student that has fewer,
before training anything). The Fashion-MNIST variants use ``small_cnn`` width 16 (the
distill_config default), which 2 CPU cores train on the embedded slice in about 2-3 s
per epoch (the Skeptical student, with its two heads, 5-8 s). Three student seeds
everywhere (``attacks.seeds=(0, 1, 2)``): the report's per-attack decisions are Welch 95%
intervals over seeds.
"""

import pathlib

import ml_collections

from jaxprotect.config import lock, parse_variant
from jaxprotect.distill import distill_config

_FMNIST_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-mnist"
VARIANTS = ("fashion_mnist_mini", "fashion_mnist", "fashion_mnist_resnet18", "cifar10", "cifar100")
METHODS = ("ce", "nasty", "cmim")
WHERE = "experiments/cmim.py"


def _sgd(optimizer: ml_collections.ConfigDict, lr: float, weight_decay: float = 5e-4, schedule: str = "cosine",
         milestones=(), gamma: float = 0.1, grad_clip: float = 0.0) -> None:
  """Sets ``optimizer`` (an ``optimizer`` section) to SGD with momentum 0.9."""
  optimizer.update(dict(name="sgd", lr=lr, momentum=0.9, nesterov=False, weight_decay=weight_decay,
                        schedule=schedule, warmup_epochs=0.0, milestones=tuple(milestones), gamma=gamma,
                        grad_clip=grad_clip))


def _cnn_student(student: ml_collections.ConfigDict, width: int) -> None:
  """A ``small_cnn`` student of ``width`` (two conv layers, so the Skeptical heads tap conv0 and conv1)."""
  student.model = "small_cnn"
  student.model_kwargs = ml_collections.ConfigDict(dict(width=width))


def get_config(arg: str | None = None):
  variant, options = parse_variant(arg, VARIANTS, METHODS, where=WHERE)
  if len(options) > 1:
    raise ValueError(f"{WHERE}:{arg}: at most one teacher method, got {', '.join(options)}")
  c = distill_config()
  if options:
    c.method = options[0]
  t, s, a = c.teacher, c.student, c.attacks
  if variant in ("fashion_mnist_mini", "fashion_mnist"):
    _cnn_student(s, width=16)
  if variant == "fashion_mnist_mini":
    t.epochs = 10
    t.eval_batch_size = 500
    s.epochs = 10
    a.dkd.warmup_epochs = 2.0  # 20 of 240 epochs in the reference recipe, scaled
  elif variant == "fashion_mnist":
    c.data.name = "fashion_mnist"
    c.data.dir = str(_FMNIST_DIR) if _FMNIST_DIR.exists() else None
    t.epochs = 10
    t.eval_batch_size = 1000
    s.epochs = 10
    s.eval_batch_size = 1000
    a.dkd.warmup_epochs = 2.0
  elif variant == "fashion_mnist_resnet18":
    c.data.name = "fashion_mnist"
    c.data.dir = str(_FMNIST_DIR) if _FMNIST_DIR.exists() else None
    t.model = "resnet18"
    t.model_kwargs.width = 64
    t.epochs = 30
    _sgd(t.optimizer, 0.1)
    t.augment = "crop4,flip"
    t.eval_batch_size = 1000
    _cnn_student(s, width=16)
    s.epochs = 30
    s.eval_batch_size = 1000
    s.augment = "crop4,flip"
    a.seeds = (0, 1, 2)
    a.dkd.warmup_epochs = 3.0
  elif variant == "cifar10":
    c.data.name = "cifar10"
    t.model = "resnet18"
    t.model_kwargs.width = 64
    t.epochs = 160
    _sgd(t.optimizer, 0.1, schedule="multistep", milestones=(80, 120))
    t.augment = "crop4,flip"
    c.nasty.tau, c.nasty.omega = 4.0, 0.04
    s.model = "small_cnn"
    s.model_kwargs = ml_collections.ConfigDict(dict(width=32))
    s.epochs = 100  # the Nasty Teacher code's CNN student: Adam 1e-3, no decay, 100 epochs, no clipping
    s.augment = "crop4,flip"
    _sgd(s.optimizer, 1e-3, weight_decay=0.0, schedule="constant")
    s.optimizer.name = "adam"
    a.kd.temperatures = (1.0, 4.0, 10.0, 20.0)
    a.seeds = (0, 1, 2)
    a.dkd.warmup_epochs = 20.0
  elif variant == "cifar100":
    c.data.name = "cifar100"
    t.model = "resnet50"
    t.model_kwargs.width = 64
    t.epochs = 240
    t.batch_size = 64
    _sgd(t.optimizer, 0.05, schedule="multistep", milestones=(150, 180, 210))
    t.augment = "crop4,flip"
    c.nasty.tau, c.nasty.omega = 20.0, 0.005
    s.model = "resnet18"
    s.model_kwargs = ml_collections.ConfigDict()
    s.epochs = 240
    s.batch_size = 64
    s.augment = "crop4,flip"
    _sgd(s.optimizer, 0.05, schedule="multistep", milestones=(150, 180, 210))  # the recipe's, no clipping
    a.kd.temperatures = (1.0, 4.0, 10.0, 20.0)
    a.seeds = (0, 1, 2)
    a.dkd.warmup_epochs = 20.0
  return lock(c)
