"""scripts/train.py --strategy: the flag checks, the TPU error, and a 2-worker run on loopback."""

import json
import os

import pytest

import script_runner
from scripts import train
from scripts.benchmark_communication import free_ports
from test_multi_worker import TIMEOUT

TINY = ["--task=adding", "--num_train=200", "--num_test=50", "--epochs=2", "--batch_size=50",
        "--methods=sgd", "--learning_rate=0.1", "--verbose=0"]


@pytest.mark.parametrize("settings, message", [
    (dict(strategy="multi_worker"), "needs the cluster: --worker_hosts"),
    (dict(strategy="multi_worker", task_index=0), "--task_index needs --worker_hosts"),
    (dict(strategy="multi_worker", worker_hosts=("localhost:1", "localhost")),
     "HOST:PORT, got 'localhost'"),
    (dict(strategy="multi_worker", worker_hosts=("localhost:1", "localhost:2")),
     "needs --task_index"),
    (dict(strategy="multi_worker", worker_hosts=("localhost:1", "localhost:2"), task_index=2),
     "--task_index=2 is beyond the 2 --worker_hosts"),
    (dict(strategy="multi_worker", worker_hosts=("localhost:1",), task_index=-1),
     "`task_index` must be an integer >= 0, got -1"),
    (dict(strategy="default", worker_hosts=("localhost:1",), task_index=0),
     "configure --strategy=multi_worker"),
    (dict(strategy="mirrored", tpu="local"), "--tpu='local' needs --strategy=tpu"),
    (dict(strategy="gpu"), "`strategy` must be one of"),
])
def test_bad_strategy_settings_name_the_flag_and_the_fix(monkeypatch, settings, message):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match=message):
        train.RunConfig(**settings)


def test_multi_worker_from_tf_config_needs_no_flags(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]},
                                                 "task": {"type": "worker", "index": 0}}))
    assert train.RunConfig(strategy="multi_worker").strategy == "multi_worker"


def test_tpu_strategy_without_a_tpu_names_the_fix(tmp_path):
    proc = script_runner.run_script("train.py", "--strategy=tpu", "--tpu=local",
                                    f"--output_dir={tmp_path}", *TINY)
    assert proc.returncode != 0
    assert "--strategy=tpu found no TPU at --tpu='local'" in proc.stderr
    assert "use --strategy=default or --strategy=mirrored" in proc.stderr


def test_two_workers_train_with_train_py(tmp_path):
    """The same command on two workers (--worker_hosts, --task_index): both finish, the chief
    writes into --output_dir, worker 1 into --output_dir/worker_1, with the same curve (the
    weights are the same on both workers)."""
    hosts = ",".join(f"localhost:{port}" for port in free_ports(2))
    common = [f"--output_dir={tmp_path / 'out'}", f"--data_dir={tmp_path / 'tfds'}",
              "--strategy=multi_worker", f"--worker_hosts={hosts}", *TINY]
    # The data set is generated here, once, before the workers read it.
    train.load_task(train.RunConfig(task="adding", num_train=200, num_test=50,
                                    data_dir=str(tmp_path / "tfds")).task_config())
    processes = [script_runner.start_script("train.py", *common, f"--task_index={i}")
                 for i in range(2)]
    for process in processes:
        _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr[-3000:]
    summaries = []
    for directory in (tmp_path / "out", tmp_path / "out" / "worker_1"):
        with open(directory / "summary.json") as f:
            summaries.append(json.load(f))
        assert (directory / "sgd" / "model.keras").exists()
        assert not (directory / "sgd" / "backup").exists()
    errors = [s["results"]["sgd"]["test_errors"] for s in summaries]
    assert len(errors[0]) == 2 and errors[0] == errors[1]
    assert summaries[0]["run"]["strategy"] == "multi_worker"
    assert 0.0 < errors[0][-1] < 1.0
    assert not os.path.exists(tmp_path / "out" / "worker_0")
