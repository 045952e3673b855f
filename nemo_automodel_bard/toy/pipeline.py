"""``bard demo``: the toy reproduction end to end.

Stages (each logged to ``OUT/logs/<stage>.log``, progress echoed):

0. ``data``    toy task splits (``toy/task.py``), or ``--data DIR`` checked and normalised
               (``toy/data_dir.py``: ``DIR/{train,val,test}.jsonl``, messages schema, images);
1. ``ar``      the autoregressive Qwen3-VL: the shipped checkpoint
               (``toy/assets/ar``), or trained now through AutoModel's VLM fine-tune recipe
               (``toy/stage0.py``): the toy curriculum with ``--retrain-ar``, ``train:STEPS``
               over every training row with ``--data`` (word-level processor over the data's
               words, ``OUT/processor``);
2. ``convert`` ``bard convert`` -> the Bard-VL initial checkpoint (B=4);
3. ``pbm``     ``bard finetune --recipe bard_pbm`` with the packaged ``recipes/toy_pbm.yaml`` (4 -> 8 -> 16 -> 32);
4. ``swd``     ``bard finetune --recipe bard_swd`` with the packaged ``recipes/toy_swd.yaml`` (B=32 student, B=4 anchor);
5. ``eval``    the SWD model's threshold sweep on the val split picks the operating threshold;
               the AR model and every Bard checkpoint on the test split (the sweep too, for
               the trade-off plot); the paired-bootstrap interval of the exact-match gap;
               AR and Bard tokens/s timed interleaved at batch 1 and 8 (``toy/stats.py``);
               ``accuracy_vs_throughput.png``, ``summary.json``, a table.

``bard demo [--quick | --profile full] [--out DIR] [--data DIR]``. ``--quick`` shrinks every
stage (CI smoke test); its numbers mean nothing. ``--profile full`` trains PBM and SWD about
three times longer than the default (about 30 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from math import ceil
from pathlib import Path

from nemo_automodel_bard.recipes.launch import packaged_yaml

__all__ = ["Profile", "PROFILES", "StaleRunError", "check_reuse", "main", "run_pipeline", "summary_fields"]

ASSET_AR = Path(__file__).resolve().parent / "assets" / "ar"


@dataclass(frozen=True)
class Profile:
    """Sizes and step counts of one demo mode."""

    train: int
    test: int
    val: int  # picks the operating threshold (never the test split)
    ar_curriculum: str  # stage0 --curriculum of --retrain-ar (the toy task)
    pbm_steps: tuple[int, int, int, int]
    swd_steps: int
    batch_size: int
    thresholds: tuple[float, ...]
    warmup: int
    eval_batch_size: int = 16  # accuracy passes; outputs equal batch 1 (tests/toy/test_evaluate.py)
    speed_prompts: int = 64  # test prompts timed for the speed ratios (16 gave a TPF far from the split's)
    speed_repeats: int = 5  # interleaved passes; medians over these
    # Also decode the whole threshold sweep on test (the trade-off curve on test). Off by
    # default: it costs one full test pass per threshold, the largest part of the evaluation.
    test_sweep: bool = False
    ar_steps: int = 1500  # --data: stage0 --curriculum train:STEPS (every training row)


PROFILES = {
    # Most PBM steps go to B=4: it is the first conversion step and SWD's anchor (docs/results.md,
    # runs E and G: 1,000 -> 2,200 B=4 steps turned Bard - AR from -5.1 into +2.0 points).
    "default": Profile(train=4000, test=1000, val=300, ar_curriculum="default", pbm_steps=(2200, 100, 100, 400), swd_steps=300,
                       batch_size=16, thresholds=(0.3, 0.5, 0.7, 0.9, 0.95), warmup=5),
    # longer training on the same data and evaluation: PBM 3,000 / 300 / 300 / 1,000, SWD 900
    "full": Profile(train=4000, test=1000, val=300, ar_curriculum="default", pbm_steps=(3000, 300, 300, 1000),
                    swd_steps=900, batch_size=16, thresholds=(0.3, 0.5, 0.7, 0.9, 0.95), warmup=5),
    "quick": Profile(train=64, test=6, val=6, ar_curriculum="read:1-3:1,all:4-8:2", pbm_steps=(2, 2, 2, 2), swd_steps=2,
                     batch_size=4, thresholds=(0.5, 0.9), warmup=1, eval_batch_size=4, speed_prompts=6,
                     speed_repeats=2, test_sweep=True, ar_steps=4),
}


def _log(message: str) -> None:
    print(f"[bard demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _run_logged(name: str, cmd: list[str], log_path: Path, echo: tuple[str, ...] = ("| step ",)) -> None:
    """Run ``cmd``; all output goes to ``log_path``, lines containing ``echo`` also to stdout."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:  # type: ignore[union-attr]
            log.write(line)
            if any(token in line for token in echo):
                print(f"  [{name}] {line.strip()[-150:]}", flush=True)
        code = proc.wait()
    if code != 0:
        tail = log_path.read_text().splitlines()[-15:]
        raise RuntimeError(f"stage {name} failed (exit {code}); see {log_path}:\n" + "\n".join(tail))


def _bard(*args: str) -> list[str]:
    return [sys.executable, "-m", "nemo_automodel_bard.cli", *args]


def _yaml(name: str) -> Path:
    # Packaged with the recipes (nemo_automodel_bard.recipe_configs): works outside a checkout too.
    return packaged_yaml(name)


def stage_ar(out: Path, profile: Profile, retrain: bool, seed: int = 0,
             processor: Path | None = None) -> tuple[Path, str]:
    """The AR checkpoint: the shipped one, or trained now (always with ``processor``, i.e. ``--data``)."""
    target = out / "ar"
    if (target / "config.json").is_file():
        return target, "reused"
    if not retrain and processor is None and (ASSET_AR / "config.json").is_file():
        shutil.copytree(ASSET_AR, target)
        return target, f"shipped checkpoint {ASSET_AR} (retrain: bard demo --retrain-ar)"
    curriculum = profile.ar_curriculum if processor is None else f"train:{profile.ar_steps}"
    # AutoModel's VLM fine-tune recipe, one run per curriculum phase (toy/stage0.py)
    cmd = [sys.executable, "-m", "nemo_automodel_bard.toy.stage0", "--data", str(out / "data"), "--out", str(target),
           "--curriculum", curriculum, "--data-seed", str(seed), "--work-dir", str(out / "ar.work"),
           # the settings the curriculum was measured with (docs/results.md, stage 0)
           "--batch-size", "16", "--lr", "3e-3", "--vision-lr-multiplier", "3",
           *(["--processor", str(processor)] if processor else [])]
    _run_logged("ar", cmd, out / "logs" / "ar.log", echo=("[stage0 recipe]", "| step "))
    return target, f"trained from scratch, curriculum {curriculum}"


def stage_pbm(out: Path, init: Path, profile: Profile, extra: list[str]) -> Path:
    """Run the 4 PBM stages; returns the PBM base directory."""
    stages = ", ".join(f"{{block_size: {b}, max_steps: {s}}}" for b, s in zip((4, 8, 16, 32), profile.pbm_steps))
    cmd = _bard("finetune", "--recipe", "bard_pbm", "--config", str(_yaml("toy_pbm.yaml")),
                "--model.pretrained_model_name_or_path", str(init),
                "--dataset.path_or_dataset", str(out / "data" / "train.jsonl"),
                "--checkpoint.checkpoint_dir", str(out / "pbm"),
                "--step_scheduler.global_batch_size", str(profile.batch_size),
                "--step_scheduler.local_batch_size", str(profile.batch_size),
                "--lr_scheduler.lr_warmup_steps", str(profile.warmup),
                "--pbm.stages", f"[{stages}]", *extra)
    _run_logged("pbm", cmd, out / "logs" / "pbm.log", echo=("| step ", "PBM stage"))
    return out / "pbm"


def stage_swd(out: Path, student: Path, teacher: Path, profile: Profile, kind: str = "anchor",
              name: str = "swd", extra: list[str] | None = None) -> Path:
    """SWD of the B=32 student; returns its final consolidated checkpoint (reused when finished)."""
    from nemo_automodel_bard.recipes.pbm import find_final_consolidated

    final = find_final_consolidated(out / name)
    # finished: the last step's export (check_reuse vouches for the settings). Not relaunched:
    # AutoModel refuses to restore a checkpoint whose model path moved (a copied run folder),
    # retrains from scratch and then fails on the existing step folders.
    if final is not None and final.parents[1].name.endswith(f"_step_{profile.swd_steps - 1}"):
        return final
    cmd = _bard("finetune", "--recipe", "bard_swd", "--config", str(_yaml("toy_swd.yaml")),
                "--model.pretrained_model_name_or_path", str(student),
                "--teacher_model.pretrained_model_name_or_path", str(teacher),
                f"--teacher.kind={kind}",
                "--dataset.path_or_dataset", str(out / "data" / "train.jsonl"),
                "--checkpoint.checkpoint_dir", str(out / name),
                "--step_scheduler.max_steps", str(profile.swd_steps),
                "--step_scheduler.global_batch_size", str(profile.batch_size),
                "--step_scheduler.local_batch_size", str(profile.batch_size),
                "--lr_scheduler.lr_warmup_steps", str(profile.warmup), *(extra or []))
    _run_logged(name, cmd, out / "logs" / f"{name}.log")
    final = find_final_consolidated(out / name)
    if final is None:
        raise RuntimeError(f"SWD finished without a consolidated checkpoint in {out / name}")
    return final


def stage_eval(out: Path, ar: Path, checkpoints: dict[str, Path], profile: Profile, sweep: str,
               max_new_tokens: int = 32) -> dict:
    """Evaluate AR + every checkpoint (their own block size, threshold 0.9) + the sweep of ``sweep``.

    The sweep runs on val and :func:`~nemo_automodel_bard.toy.stats.choose_threshold` picks
    the operating threshold there; test then decodes that threshold (the whole sweep only with
    ``profile.test_sweep``). The trade-off plot shows the val sweep against AR on val. The
    speed ratios are timed last, AR against ``sweep`` at the chosen threshold.
    """
    import torch

    from nemo_automodel_bard.toy import evaluate as ev
    from nemo_automodel_bard.toy.plot import plot_tradeoff
    from nemo_automodel_bard.toy.stats import choose_threshold

    torch.set_num_threads(1)  # same reason as `bard eval --threads 1`
    test = ev.load_examples(out / "data" / "test.jsonl", profile.test)
    val = ev.load_examples(out / "data" / "val.jsonl", profile.val)
    bs = profile.eval_batch_size
    ar_model, processor = ev.load_ar(ar)
    ar_decode = ev.ar_decoder(ar_model, processor, max_new_tokens)
    rows = [ev.evaluate("AR", ar_decode, test, {"kv_cache": True}, batch_size=bs)]
    val_rows = [asdict(ev.evaluate("AR", ar_decode, val, {"kv_cache": True}, batch_size=bs))]
    chosen, bard_decode = None, None
    for label, path in checkpoints.items():
        model = ev.load_bard(path)
        if label != sweep:
            settings = ev.bard_settings(int(model.config.block_size), 0.9)
            rows.append(ev.evaluate(f"{label}@0.9", ev.bard_decoder(model, processor, max_new_tokens, **settings),
                                    test, settings, batch_size=bs))
            continue
        for threshold in profile.thresholds:
            settings = ev.bard_settings(32, threshold)
            decode = ev.bard_decoder(model, processor, max_new_tokens, **settings)
            val_rows.append(asdict(ev.evaluate(f"{label}@{threshold}", decode, val, settings, batch_size=bs)))
        chosen = choose_threshold(val_rows[1:])
        for threshold in profile.thresholds if profile.test_sweep else (chosen["threshold"],):
            settings = ev.bard_settings(32, threshold)
            decode = ev.bard_decoder(model, processor, max_new_tokens, **settings)
            rows.append(ev.evaluate(f"{label}@{threshold}", decode, test, settings, batch_size=bs))
            if threshold == chosen["threshold"]:
                bard_decode = decode
    speed = None
    if bard_decode is not None:
        speed = ev.timed_speedups(ar_decode, bard_decode, test[: profile.speed_prompts], (1, 8), profile.speed_repeats)
    results = [asdict(r) for r in rows]
    plot_tradeoff(val_rows, out / "accuracy_vs_throughput.png", split="val")
    (out / "eval.json").write_text(json.dumps({"test": results, "val": val_rows, "chosen": chosen, "speed": speed},
                                              indent=1))
    return {"rows": results, "val_rows": val_rows, "chosen": chosen, "speed": speed,
            "table": ev.format_table(results)}


def summary_fields(results: list[dict], sweep: str, chosen: dict | None = None, speed: dict | None = None,
                   target_threshold: float = 0.9) -> dict:
    """The issue's targets, from the test rows, the val-chosen threshold and the interleaved timing.

    Args:
        results: test rows (``Metrics`` dicts; ``hits`` give the paired bootstrap).
        chosen: :func:`~nemo_automodel_bard.toy.stats.choose_threshold`'s answer on val; without
            it ``target_threshold`` is used (and ``threshold_chosen_on`` says ``"fixed"``).
        speed: :func:`~nemo_automodel_bard.toy.evaluate.timed_speedups`'s answer; without it
            the speedup is the ratio of the rows' own tokens/s (not interleaved).
    """
    from nemo_automodel_bard.toy.stats import paired_bootstrap_diff

    ar = next(r for r in results if r["name"] == "AR")
    threshold = chosen["threshold"] if chosen else target_threshold
    bard = next((r for r in results if r["name"] == f"{sweep}@{threshold}"), None)
    if bard is None:
        return {"ar": ar, "bard": None}
    gap = 100 * (ar["exact_match"] - bard["exact_match"])
    out = {
        "ar_exact_match": ar["exact_match"],
        "bard_exact_match": bard["exact_match"],
        "bard_setting": bard["name"],
        "threshold": threshold,
        "threshold_chosen_on": "val" if chosen else "fixed",
        "threshold_choice": chosen,
        "accuracy_gap_points": gap,  # AR minus Bard: positive = Bard below AR
        "bard_tpf": bard["tpf"],
    }
    if ar.get("hits") and bard.get("hits"):
        ci = paired_bootstrap_diff(bard["hits"], ar["hits"])  # Bard minus AR, per sample
        out["bard_minus_ar_points"] = {k: 100 * ci[k] for k in ("diff", "low", "high", "half_width")}
        out["accuracy_gap_interval_points"] = [-100 * ci["high"], -100 * ci["low"]]
        out["interval"] = {k: ci[k] for k in ("samples", "resamples", "level")}
    out["per_type_exact_match"] = {
        task: {"ar": ar["per_task"][task], "bard": bard["per_task"].get(task),
               "samples": ar.get("per_task_samples", {}).get(task)}
        for task in ar.get("per_task", {})
    }
    if speed:
        out["speedup_tokens_per_s"] = {b: v["speedup"]["median"] for b, v in speed.items()}
        out["speed"] = speed
        batch1 = out["speedup_tokens_per_s"].get("batch_1", 0.0)
    else:
        batch1 = bard["tokens_per_s"] / ar["tokens_per_s"] if ar["tokens_per_s"] else 0.0
        out["speedup_tokens_per_s"] = batch1
    out["targets"] = {
        "within_1_point_of_ar": gap <= 1.0,
        "tpf_at_least_4": bard["tpf"] >= 4.0,
        "speedup_at_least_4x": batch1 >= 4.0,
    }
    return out


def machine_info() -> dict:
    """CPU model, core and torch thread counts of the evaluation (speed figures depend on them)."""
    import torch

    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu_model": cpu, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version()}


def stage_data(out: Path, profile: Profile, seed: int, data: Path | None) -> dict:
    """The splits in ``OUT/data``; with ``data`` also the word-level processor (``OUT/processor``).

    Returns the data notes: for ``--data`` the split sizes, vocabulary size, the decode length
    (``max_new_tokens``, the longest answer rounded up to 32-token blocks) and the PBM/SWD
    ``max_length`` that keeps every row whole.
    """
    from nemo_automodel_bard.toy.task import generate_splits

    if data is None:
        generate_splits(out / "data", seed=seed, sizes={"train": profile.train, "val": profile.val, "test": profile.test})
        return {"source": "toy task (toy/task.py)", "max_new_tokens": 32}
    from nemo_automodel_bard.toy.data_dir import prepare_data
    from nemo_automodel_bard.toy.processor import save_processor

    info = prepare_data(data, out / "data", val_rows=profile.val, seed=seed)
    save_processor(out / "processor", info.words)
    blocks = ceil(info.max_answer_tokens / 32)
    # image (<= 16 merged tokens with the toy processor) + chat template + question + answer
    needed = 16 + 16 + info.max_question_words + 32 * blocks
    return {"source": str(data), "rows": info.rows, "val_from_train": info.val_from_train, "words": len(info.words),
            "tasks": info.tasks, "unknown_question_words": info.unknown_question_words,
            "max_new_tokens": 32 * blocks, "max_length": max(256, 64 * ceil(needed / 64))}


# What the reused stages were made with; the evaluation fields may change between runs.
TRAINING_FIELDS = ("train", "ar_curriculum", "pbm_steps", "swd_steps", "batch_size", "warmup", "ar_steps")


class StaleRunError(ValueError):
    """``--out`` holds stages made with other training settings than this run asks for."""


def check_reuse(out: Path, profile: Profile, seed: int, data: Path | None) -> None:
    """Refuse to reuse stages of ``out`` trained with other settings; record this run's (``OUT/run.json``).

    Finished stages are reused by their presence alone, so a changed ``--pbm-steps`` (or
    profile, seed, dataset) on an old folder would evaluate the old checkpoints under the
    new settings' name. Runs from before ``run.json`` are checked against ``summary.json``.
    """
    wanted = {"seed": seed, "data": str(data) if data is not None else None,
              **{k: v for k, v in json.loads(json.dumps(asdict(profile))).items() if k in TRAINING_FIELDS}}
    if data is None:
        wanted.pop("ar_steps")  # the toy task's AR comes from its curriculum
    record = out / "run.json"
    previous = None
    if record.is_file():
        previous = json.loads(record.read_text())
    elif (out / "summary.json").is_file():
        old = json.loads((out / "summary.json").read_text()).get("profile") or {}
        previous = {k: old[k] for k in wanted if k in old}
    if previous:
        changed = {k: (previous[k], v) for k, v in wanted.items() if k in previous and previous[k] != v}
        if changed:
            what = "; ".join(f"{k}: {old!r} there, {new!r} now" for k, (old, new) in changed.items())
            raise StaleRunError(f"{out} holds stages made with other settings ({what}); its checkpoints would be "
                                f"reused under this run's name: pass a new --out or remove {out}")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(wanted, indent=1))


def run_pipeline(out: Path, mode: str, retrain_ar: bool, seed: int = 0, profile: Profile | None = None,
                 data: Path | None = None) -> dict:
    """All stages; returns (and writes) the summary. ``data``: a dataset folder instead of the toy task."""
    profile = profile or PROFILES[mode]
    check_reuse(out, profile, seed, data)
    timings: dict[str, float] = {}
    notes: dict[str, str] = {}
    start_all = time.time()

    def timed(name: str, fn, *args, **kwargs):
        _log(f"stage {name} ...")
        t0 = time.time()
        result = fn(*args, **kwargs)
        timings[name] = round(time.time() - t0, 1)
        _log(f"stage {name} done in {timings[name]:.0f}s")
        return result

    data_notes = timed("data", stage_data, out, profile, seed, data)
    processor = out / "processor" if data is not None else None
    ar, notes["ar"] = timed("ar", stage_ar, out, profile, retrain_ar, seed, processor)
    extra = [] if data is None else ["--dataset.max_length", str(data_notes["max_length"])]
    init = out / "bard_init"
    if not (init / "config.json").is_file():
        cmd = _bard("convert", "--from", str(ar), "--to", str(init), "--mask-token-id", "7",
                    "--mask-token", "<|mask|>", "--block-size", "4", "--overwrite")
        timed("convert", _run_logged, "convert", cmd, out / "logs" / "convert.log")
    pbm = timed("pbm", stage_pbm, out, init, profile, extra)
    b4, b32 = pbm / "stage_0_b4" / "hf", pbm / "stage_3_b32" / "hf"
    swd = timed("swd", stage_swd, out, b32, b4, profile, extra=extra)
    checkpoints = {"pbm_b4": b4, "pbm_b32": b32, "swd_b32": swd}
    evaluation = timed("eval", stage_eval, out, ar, checkpoints, profile, sweep="swd_b32",
                       max_new_tokens=data_notes["max_new_tokens"])
    summary = {
        "mode": mode,
        "data": data_notes,
        "profile": asdict(profile),
        "stage_seconds": timings,
        "total_seconds": round(time.time() - start_all, 1),
        "notes": notes,
        "machine": machine_info(),
        "checkpoints": {k: str(v) for k, v in {"ar": ar, **checkpoints}.items()},
        "results": evaluation["rows"],
        "val_results": evaluation["val_rows"],
        **summary_fields(evaluation["rows"], "swd_b32", evaluation["chosen"], evaluation["speed"]),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(evaluation["table"])
    print(json.dumps({k: summary[k] for k in ("stage_seconds", "total_seconds")}))
    if "targets" in summary:
        print(json.dumps({k: summary.get(k) for k in ("threshold", "threshold_chosen_on", "accuracy_gap_points",
                                                       "accuracy_gap_interval_points", "bard_tpf",
                                                       "speedup_tokens_per_s", "targets")}))
    return summary


def main(argv: list[str]) -> int:
    """``bard demo`` entry point."""
    parser = argparse.ArgumentParser(prog="bard demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (numbers are meaningless)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=None,
                        help="default (~12 min on 2 CPU cores), full (~3x the PBM/SWD steps) or quick (= --quick)")
    parser.add_argument("--out", default="runs/toy", help="run folder (stages already done there are reused)")
    parser.add_argument("--retrain-ar", action="store_true", help="train the AR model instead of using the shipped one")
    parser.add_argument("--data", type=Path, default=None,
                        help="run on DIR/{train,val,test}.jsonl (messages schema with images; val optional) instead of "
                             "the toy task: the AR model is trained on it with a word-level tokenizer over its words")
    parser.add_argument("--ar-steps", type=int, default=None, help="--data: AR training steps (default 1500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pbm-steps", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                        help="steps of the B=4,8,16,32 PBM stages, e.g. 150,60,60,150")
    parser.add_argument("--swd-steps", type=int, default=None)
    parser.add_argument("--test", type=int, default=None, help="test samples to evaluate")
    parser.add_argument("--val", type=int, default=None, help="val samples the threshold is chosen on")
    args = parser.parse_args(argv)
    if args.quick and args.profile not in (None, "quick"):
        parser.error(f"--quick and --profile {args.profile} contradict each other")
    mode = "quick" if args.quick else args.profile or "default"
    options = (("pbm_steps", args.pbm_steps), ("swd_steps", args.swd_steps), ("test", args.test), ("val", args.val),
               ("ar_steps", args.ar_steps))
    changes = {k: v for k, v in options if v is not None}
    if args.pbm_steps is not None and len(args.pbm_steps) != 4:
        parser.error("--pbm-steps needs 4 comma-separated counts (B=4,8,16,32)")
    if args.data is not None and args.retrain_ar:
        parser.error("--retrain-ar is for the toy task: with --data the AR model is always trained on DIR")
    if args.ar_steps is not None and args.ar_steps < 1:
        parser.error("--ar-steps must be >= 1")
    if args.ar_steps is not None and args.data is None:
        parser.error("--ar-steps sets the AR training of --data (the toy task's AR uses its curriculum)")
    from nemo_automodel_bard.toy.data_dir import DataError

    try:
        run_pipeline(Path(args.out), mode, args.retrain_ar, args.seed, replace(PROFILES[mode], **changes), args.data)
    except (DataError, StaleRunError) as err:  # a dataset --data cannot serve (file and line), a stale --out
        print(f"bard demo: {err}", file=sys.stderr)
        return 2
    return 0
