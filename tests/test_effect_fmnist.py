"""An effect on real data: a small CNN learns Fashion-MNIST (full IDX files)."""

import json

import pytest

from jaxprotect import config as config_lib, runner


@pytest.mark.slow
def test_small_cnn_reaches_85_percent_on_real_fashion_mnist(fmnist_dir, tmp_path):
  c = config_lib.train_config()
  c.data.name = "fashion_mnist"
  c.data.dir = str(fmnist_dir)
  t = c.train
  t.epochs = 1
  t.batch_size = 128
  t.eval_batch_size = 1000
  t.optimizer.lr = 0.05
  t.augment = "none"
  c.runtime.progress = False
  # one device: 8 simulated devices on 2 cores starve each other's collectives at this size
  c.runtime.num_devices = 1
  results = runner.fit(c, tmp_path)
  assert results["dataset"]["train_size"] == 60000 and results["dataset"]["test_size"] == 10000
  assert results["test_accuracy"] >= 0.85, results
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["test_accuracy"] == results["test_accuracy"]
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert records[-1]["test_accuracy"] == pytest.approx(results["test_accuracy"])
