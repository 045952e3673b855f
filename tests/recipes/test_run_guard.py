"""Checkpoint-folder lock, run id (trust boundary) and per-step metrics flush (issue 11 items 5, 6)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from nemo_automodel_bard.recipes import run_guard
from nemo_automodel_bard.recipes.run_guard import (
    LOCK_NAME,
    RUN_ID_NAME,
    CheckpointDirError,
    CheckpointLock,
    check_resume_trusted,
    guard_checkpoint_dir,
    write_run_id,
)


@pytest.fixture(autouse=True)
def _own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("BARD_RUN_KEY_FILE", str(tmp_path / "key" / "run_key"))
    for name in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(folder, **holder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def test_second_run_in_the_same_folder_is_refused_with_holder_and_remedy(tmp_path):
    first = CheckpointLock(tmp_path)
    first.acquire()
    holder = json.loads((tmp_path / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    # another live process on another host holds it: refused, naming pid, host and how to clear it
    _write_lock(tmp_path / "b", pid=os.getppid(), host="node-17", slurm_job_id="4242", started="then")
    with pytest.raises(CheckpointDirError) as err:
        CheckpointLock(tmp_path / "b").acquire()
    message = str(err.value)
    assert "in use by another run" in message and "node-17" in message and "4242" in message
    assert f"delete {tmp_path / 'b' / LOCK_NAME}" in message
    first.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    _write_lock(tmp_path, pid=os.getppid(), host=socket.gethostname())
    with pytest.raises(CheckpointDirError, match=f"pid {os.getppid()}"):
        CheckpointLock(tmp_path).acquire()


def test_stale_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname())
    lock = CheckpointLock(tmp_path)
    lock.acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_requeued_slurm_job_takes_over_its_own_lock_on_another_node(tmp_path, monkeypatch):
    _write_lock(tmp_path, pid=1, host="node-01", slurm_job_id="777")
    monkeypatch.setenv("SLURM_JOB_ID", "778")
    with pytest.raises(CheckpointDirError):
        CheckpointLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    CheckpointLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == socket.gethostname()


def test_unreadable_lock_is_refused_not_ignored(tmp_path):
    (tmp_path / LOCK_NAME).write_text("{half")
    with pytest.raises(CheckpointDirError, match="unknown process"):
        CheckpointLock(tmp_path).acquire()


def _fake_checkpoint(root):
    (root / "epoch_0_step_2" / "optim").mkdir(parents=True)
    (root / "epoch_0_step_2" / "optim" / ".metadata").write_bytes(b"pickle")


def test_resume_of_a_folder_we_did_not_write_is_refused_unless_trusted(tmp_path):
    foreign = tmp_path / "foreign"
    _fake_checkpoint(foreign)
    with pytest.raises(CheckpointDirError, match="bard.trust_checkpoint_dir") as err:
        check_resume_trusted(foreign, None, trust=False)
    assert "unpickles" in str(err.value)
    check_resume_trusted(foreign, None, trust=True)
    # restore_from pointing into a foreign folder is checked too, from a folder of our own
    ours = tmp_path / "ours"
    ours.mkdir()
    write_run_id(ours)
    with pytest.raises(CheckpointDirError):
        check_resume_trusted(ours, str(foreign / "epoch_0_step_2"), trust=False)
    check_resume_trusted(ours, None, trust=False)  # our folder, no checkpoint yet
    _fake_checkpoint(ours)
    check_resume_trusted(ours, "LATEST", trust=False)  # ours, with checkpoints


def test_a_copied_run_id_does_not_make_a_folder_trusted(tmp_path, monkeypatch):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    monkeypatch.setenv("BARD_RUN_KEY_FILE", str(tmp_path / "their_key"))
    write_run_id(theirs)  # written under someone else's key
    _fake_checkpoint(theirs)
    monkeypatch.setenv("BARD_RUN_KEY_FILE", str(tmp_path / "my_key"))
    with pytest.raises(CheckpointDirError):
        check_resume_trusted(theirs, None, trust=False)
    assert oct((tmp_path / "their_key").stat().st_mode & 0o777) == "0o600"


def test_guard_writes_run_id_and_lock_and_releases(tmp_path):
    guard = guard_checkpoint_dir(tmp_path / "run")
    assert (tmp_path / "run" / LOCK_NAME).exists() and (tmp_path / "run" / RUN_ID_NAME).exists()
    with pytest.raises(CheckpointDirError, match="in use"):
        _write_lock(tmp_path / "other", pid=os.getppid(), host="elsewhere")
        guard_checkpoint_dir(tmp_path / "other")
    guard.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_flush_metrics_writes_buffered_records_at_once(tmp_path):
    import torch
    from nemo_automodel.components.loggers.metric_logger import MetricLogger, MetricsSample

    logger = MetricLogger(str(tmp_path / "training.jsonl"))
    logger.log(MetricsSample(step=0, epoch=0, metrics={"loss": torch.tensor(1.5)}))
    assert (tmp_path / "training.jsonl").read_text() == ""  # AutoModel buffers 100 records
    run_guard.flush_metrics(logger)
    assert json.loads((tmp_path / "training.jsonl").read_text())["loss"] == 1.5
    logger.close()


def test_this_process_may_set_up_a_second_recipe_in_its_folder(tmp_path):
    first = CheckpointLock(tmp_path)
    first.acquire()  # e.g. a recipe set up but never run to its end
    second = CheckpointLock(tmp_path)
    second.acquire()
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()
