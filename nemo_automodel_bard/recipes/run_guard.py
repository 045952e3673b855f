"""Checkpoint-folder guards: one run per folder (a lock file), resume only what we wrote (run id).

* :class:`CheckpointLock` -- ``<checkpoint_dir>/.bard_lock`` records pid, host, Slurm job id and
  torchrun run id. A second run pointed at the same folder is refused with a message that names
  the holder and says how to clear it. A lock left by a dead process does not block forever: on
  the same host a dead pid is detected and the lock taken over; a requeued Slurm job (same
  ``SLURM_JOB_ID``) or a restarted torchrun job (same rendezvous id) takes over its own lock.
* Trust boundary: resuming a training checkpoint unpickles its DCP metadata (AutoModel /
  ``torch.distributed.checkpoint``), so a crafted folder runs code. The first run in a folder
  writes ``bard_run_id.json``: a random run id and an HMAC of it under a key kept in the user's
  ``~/.cache/nemo_automodel_bard/run_key`` (mode 0600; ``BARD_RUN_KEY_FILE`` overrides the
  path). A folder that holds checkpoints but no valid run id (someone else's checkpoint, or a
  copy from another account) is refused unless ``bard.trust_checkpoint_dir: true``.

Only global rank 0 touches the files; the verdict is broadcast so every rank raises the same
error (no rank is left waiting in a collective).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Callable

import torch.distributed as dist

__all__ = [
    "LOCK_NAME",
    "RUN_ID_NAME",
    "CheckpointDirError",
    "CheckpointLock",
    "check_resume_trusted",
    "write_run_id",
    "guard_checkpoint_dir",
    "on_rank0",
    "init_distributed",
    "guard_recipe",
    "flush_metrics",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".bard_lock"
RUN_ID_NAME = "bard_run_id.json"
_CHECKPOINT_RE = re.compile(r"^epoch_\d+_step_\d+$")


class CheckpointDirError(RuntimeError):
    """A checkpoint folder this run must not use (locked by another run, or not ours to resume)."""


# ---------------------------------------------------------------------------- rank-0 helper
def on_rank0(operation: Callable[[], Any]) -> Any:
    """Run ``operation`` on global rank 0 only and give every rank its result (or its error)."""
    distributed = dist.is_available() and dist.is_initialized()
    outcome: list[Any] = [None]
    failure: BaseException | None = None
    if not distributed or dist.get_rank() == 0:
        try:
            outcome[0] = ("ok", operation())
        except Exception as exc:  # reported to every rank, so none waits in a collective for rank 0
            failure = exc
            kind = "refused" if isinstance(exc, CheckpointDirError) else "failed"
            outcome[0] = (kind, f"{type(exc).__name__}: {exc}" if kind == "failed" else str(exc))
    if distributed:
        dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if failure is not None:
        raise failure
    if kind == "refused":
        raise CheckpointDirError(value)
    if kind == "failed":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


# ---------------------------------------------------------------------------- lock
def _identity() -> dict[str, Any]:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        # torchrun's default rendezvous id is "none" for every job: not an identity.
        "torchrun_run_id": "" if run_id in ("", "none") else run_id,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class CheckpointLock:
    """``<directory>/.bard_lock``, created atomically; :meth:`release` removes it if it is ours."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = _identity()
        for _ in range(2):  # second try after removing a stale lock
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read()
                reason = self._stale_reason(holder, me)
                if reason is None:
                    raise CheckpointDirError(self._refusal(holder)) from None
                logger.warning("taking over %s (%s): %s", self.path, reason, holder)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return
        raise CheckpointDirError(f"could not take the lock {self.path}; another run is starting in this folder")

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read()
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)
        self.held = False

    def _read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # half-written by a process killed mid-write: treated as unknown holder

    @staticmethod
    def _stale_reason(holder: dict[str, Any], me: dict[str, Any]) -> str | None:
        if not holder:
            return None
        for key in ("slurm_job_id", "torchrun_run_id"):
            if holder.get(key) and holder.get(key) == me[key]:
                return f"same {key} {me[key]}: a restart of the same job"
        if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
            return "held by this process (a recipe set up earlier and not run to its end)"
        if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _pid_alive(holder["pid"]):
            return f"pid {holder['pid']} on this host is no longer running"
        return None

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = (
            f"pid {holder.get('pid')} on host {holder.get('host')}"
            + (f" (Slurm job {holder['slurm_job_id']})" if holder.get("slurm_job_id") else "")
            + (f", started {holder['started']}" if holder.get("started") else "")
            if holder
            else "an unknown process (unreadable lock file)"
        )
        return (
            f"checkpoint folder {self.path.parent} is in use by another run: {who}. Two runs in one folder "
            f"overwrite each other's checkpoints. Point checkpoint.checkpoint_dir elsewhere, or, if that run "
            f"is dead (e.g. on another node), delete {self.path} and run again."
        )


# ---------------------------------------------------------------------------- run id (trust boundary)
def _key_file() -> Path:
    override = os.environ.get("BARD_RUN_KEY_FILE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nemo_automodel_bard" / "run_key"


def _key() -> bytes:
    path = _key_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
        except FileExistsError:  # another process created it first
            pass
    return path.read_text().strip().encode()


def _tag(run_id: str) -> str:
    return hmac.new(_key(), run_id.encode(), hashlib.sha256).hexdigest()


def write_run_id(directory: str | Path) -> str:
    """Write ``bard_run_id.json`` unless present; returns the folder's run id."""
    path = Path(directory) / RUN_ID_NAME
    if path.is_file():
        return json.loads(path.read_text()).get("run_id", "")
    run_id = secrets.token_hex(16)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run_id": run_id, "tag": _tag(run_id), "host": socket.gethostname(),
                               "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}))
    os.replace(tmp, path)
    return run_id


def _holds_checkpoints(directory: Path) -> bool:
    return directory.is_dir() and any(_CHECKPOINT_RE.match(p.name) for p in directory.iterdir() if p.is_dir())


def _written_by_us(directory: Path) -> bool:
    try:
        record = json.loads((directory / RUN_ID_NAME).read_text())
        return hmac.compare_digest(str(record["tag"]), _tag(str(record["run_id"])))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def restore_root(checkpoint_dir: str | Path, restore_from: str | None) -> Path:
    """The checkpoint root a resume reads: ``checkpoint_dir``, or the folder ``restore_from`` points into."""
    root = Path(checkpoint_dir)
    if not restore_from or str(restore_from) == "LATEST":
        return root
    target = Path(str(restore_from))
    if not target.is_absolute() and (root / target).exists():
        target = root / target
    return target.parent if _CHECKPOINT_RE.match(target.name) else target


def check_resume_trusted(checkpoint_dir: str | Path, restore_from: str | None, trust: bool) -> None:
    """Refuse to resume checkpoints this user's plugin did not write, unless ``trust``."""
    root = restore_root(checkpoint_dir, restore_from)
    if trust or not _holds_checkpoints(root) or _written_by_us(root):
        return
    raise CheckpointDirError(
        f"{root} holds training checkpoints that this plugin did not write (no valid {RUN_ID_NAME}). Resuming "
        "unpickles their optimizer/DCP metadata, which runs code from the folder. Only if you trust its "
        "origin, set bard.trust_checkpoint_dir: true (or --bard.trust_checkpoint_dir=true); to share weights "
        "use the HF safetensors export (loaded with from_pretrained), not the training checkpoint."
    )


# ---------------------------------------------------------------------------- entry point
def guard_checkpoint_dir(checkpoint_dir: str | Path, restore_from: str | None = None, *, trust: bool = False,
                         lock: bool = True) -> CheckpointLock:
    """Rank 0: check the resume source, take the lock, write the run id; every rank gets the verdict."""
    guard = CheckpointLock(checkpoint_dir)

    def run() -> bool:
        check_resume_trusted(checkpoint_dir, restore_from, trust)
        if lock:
            guard.acquire()
        write_run_id(checkpoint_dir)
        return True

    on_rank0(run)
    return guard


def init_distributed(config: dict[str, Any]) -> None:
    """AutoModel's own process-group init with the YAML's ``dist_env`` (its recipes skip it if done)."""
    from nemo_automodel.components.distributed.init_utils import initialize_distributed

    dist_env = config.get("dist_env") or {}
    initialize_distributed(backend=dist_env.get("backend", "nccl"), timeout_minutes=dist_env.get("timeout_minutes", 1))


def guard_recipe(config: dict[str, Any]) -> CheckpointLock:
    """The recipe hook: process group up, then :func:`guard_checkpoint_dir` on ``checkpoint.checkpoint_dir``."""
    init_distributed(config)
    checkpoint = config.get("checkpoint") or {}
    trust = bool((config.get("bard") or {}).get("trust_checkpoint_dir", False))
    return guard_checkpoint_dir(checkpoint.get("checkpoint_dir", "checkpoints"), checkpoint.get("restore_from"),
                                trust=trust)


def flush_metrics(*loggers: Any) -> None:
    """Write AutoModel's buffered jsonl records (it buffers 100) so a SIGKILL loses none already logged."""
    for metric_logger in loggers:
        if metric_logger is not None and getattr(metric_logger, "buffer", None):
            metric_logger.flush()
