"""Ablations of the toy reproduction (issue 6, item 5), on the folder a ``bard demo`` run left.

Each row changes one thing and keeps the data and the number of optimizer steps:

* ``direct_b32``: AR -> B=32 in one PBM stage of ``sum(pbm steps)`` steps, vs the progressive
  4 -> 8 -> 16 -> 32 stages of the main run (``pbm_b32``);
* ``swd_ar`` / ``swd_none``: SWD from the same PBM B=32 student with the AR source as teacher,
  or no teacher (CE only), vs the B=4 anchor (``swd_anchor``, the main run's SWD);
* ``mixed_pbm_b32``: the progressive stages with ``bard.noise.schedule: mixed`` instead of
  mask-only noise;
* with ``--revision-threshold R``: ``mixed_pbm_b32+rev`` / ``swd_anchor+rev``, the same
  checkpoints decoded with token revision (``generate(revision_threshold=R)``).

A variant whose checkpoint already exists is not trained again (delete its folder to retrain).

Every checkpoint is evaluated at B=32 with the same decoding settings on the same test
samples (the threshold the run chose on val, else 0.9), and each claim is a paired
comparison with its 95% bootstrap interval over those samples (:data:`COMPARISONS`).
Writes ``RUN/ablations/ablations.json`` and ``ablations.md`` (a table with the command that
reproduces each row, and the comparisons)::

    python -m nemo_automodel_bard.toy.ablations --run RUN [--only direct_b32,swd_none] [--limit 100]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from nemo_automodel_bard.recipes.launch import packaged_yaml

__all__ = ["COMPARISONS", "RunLayout", "Variant", "budget_overrides", "comparisons", "main", "pbm_steps", "run_profile",
           "train_command", "variants"]

EXAMPLES = packaged_yaml("toy_pbm.yaml").parent  # the packaged recipes/ folder
# (row, against, the claim it tests): exact match of ``row`` minus ``against``, paired per sample
COMPARISONS = (
    ("pbm_b32", "direct_b32", "progressive beats direct AR -> B=32"),
    ("swd_anchor", "swd_ar", "the small-block anchor beats the AR teacher"),
    ("swd_anchor", "swd_none", "the anchor beats no teacher (CE only)"),
    ("pbm_b32", "mixed_pbm_b32", "mask-only noise vs mixed noise"),
    ("mixed_pbm_b32+rev", "mixed_pbm_b32", "token revision on the mixed-noise model"),
    ("swd_anchor+rev", "swd_anchor", "token revision on a mask-only model"),
)
REVISED = ("mixed_pbm_b32", "swd_anchor")  # rows decoded again with --revision-threshold


@dataclass(frozen=True)
class RunLayout:
    """Where a ``bard demo`` run keeps its pieces (the defaults follow recipes/toy_*.yaml)."""

    root: Path
    data: str = "data"
    ar: str = "ar"
    bard_init: str = "bard_init"
    pbm: str = "pbm"
    swd: str = "swd"
    ablations: str = "ablations"

    def path(self, name: str) -> Path:
        return self.root / getattr(self, name)

    def pbm_stage(self, block_size: int) -> Path:
        """``pbm/stage_<i>_b<B>/hf`` of the main run."""
        found = sorted(self.path("pbm").glob(f"stage_*_b{block_size}/hf"))
        if not found:
            raise FileNotFoundError(f"no PBM stage with block size {block_size} under {self.path('pbm')}")
        return found[-1]


@dataclass
class Variant:
    """One ablation row: how to train it (``None`` = reuse the main run) and what to evaluate."""

    name: str
    description: str
    recipe: str | None = None
    config: Path | None = None
    overrides: list[str] = field(default_factory=list)
    checkpoint: Path | None = None  # the folder to evaluate (an hf export, or found after training)


def pbm_steps(config: Path) -> list[tuple[int, int]]:
    """``[(block_size, max_steps), ...]`` of a PBM YAML's stages."""
    stages = yaml.safe_load(config.read_text())["pbm"]["stages"]
    return [(int(s["block_size"]), int(s["max_steps"])) for s in stages]


def _flow_stages(stages: list[tuple[int, int]]) -> str:
    return "[" + ", ".join(f"{{block_size: {b}, max_steps: {s}}}" for b, s in stages) + "]"


def run_profile(run: RunLayout) -> dict | None:
    """The step/batch profile the demo run used (``summary.json``), if it recorded one."""
    path = run.root / "summary.json"
    return json.loads(path.read_text()).get("profile") if path.is_file() else None


def budget_overrides(profile: dict | None) -> list[str]:
    """Batch size and warmup of the main run, so each ablation trains on the same budget."""
    if not profile:
        return []
    batch = profile["batch_size"]
    return [f"--step_scheduler.global_batch_size={batch}", f"--step_scheduler.local_batch_size={batch}",
            f"--lr_scheduler.lr_warmup_steps={profile['warmup']}"]


def variants(run: RunLayout, pbm_config: Path, swd_config: Path, stages: list[tuple[int, int]],
             swd_steps: int | None = None, extra: list[str] | None = None) -> list[Variant]:
    """The ablation rows for ``run`` (main-run rows first, then the ones that need training).

    ``stages`` are the main run's PBM ``(block_size, steps)``; ``swd_steps`` its SWD steps
    (``None``: the YAML's); ``extra`` overrides go to every training command.
    """
    out = run.path("ablations")
    common = [f"--dataset.path_or_dataset={run.path('data') / 'train.jsonl'}", *(extra or [])]
    last_b = stages[-1][0]
    swd_student = run.pbm_stage(last_b)
    swd_common = common + [f"--model.pretrained_model_name_or_path={swd_student}"]
    if swd_steps is not None:
        swd_common.append(f"--step_scheduler.max_steps={swd_steps}")
    total = sum(s for _, s in stages)
    return [
        Variant("pbm_b32", f"progressive PBM {'->'.join(str(b) for b, _ in stages)} (main run)",
                checkpoint=swd_student),
        Variant("swd_anchor", "SWD, teacher = B=4 anchor (main run)", checkpoint=run.path("swd")),
        Variant("direct_b32", f"AR -> B={last_b} directly, {total} steps", "bard_pbm", pbm_config,
                common + [f"--model.pretrained_model_name_or_path={run.path('bard_init')}",
                          f"--pbm.stages={_flow_stages([(last_b, total)])}",
                          f"--checkpoint.checkpoint_dir={out / 'direct_b32'}"],
                checkpoint=out / "direct_b32" / f"stage_0_b{last_b}" / "hf"),
        Variant("mixed_pbm_b32", "progressive PBM with mixed noise", "bard_pbm", pbm_config,
                common + [f"--model.pretrained_model_name_or_path={run.path('bard_init')}",
                          f"--pbm.stages={_flow_stages(stages)}",
                          "--bard.noise.schedule=mixed", f"--checkpoint.checkpoint_dir={out / 'mixed_pbm'}"],
                checkpoint=out / "mixed_pbm" / f"stage_{len(stages) - 1}_b{last_b}" / "hf"),
        Variant("swd_ar", "SWD, teacher = the AR source", "bard_swd", swd_config,
                swd_common + ["--teacher.kind=ar", f"--teacher_model.pretrained_model_name_or_path={run.path('ar')}",
                              f"--checkpoint.checkpoint_dir={out / 'swd_ar'}"],
                checkpoint=out / "swd_ar"),
        Variant("swd_none", "SWD steps without a teacher (CE only)", "bard_swd", swd_config,
                swd_common + ["--teacher.kind=none", f"--checkpoint.checkpoint_dir={out / 'swd_none'}"],
                checkpoint=out / "swd_none"),
    ]


def train_command(variant: Variant) -> list[str]:
    """``bard finetune`` for a variant that needs training."""
    return [sys.executable, "-m", "nemo_automodel_bard.cli", "finetune", "--recipe", variant.recipe,
            "--config", str(variant.config), *variant.overrides]


def _resolve_checkpoint(path: Path) -> Path:
    """An hf export as is; an SWD checkpoint dir -> its newest consolidated checkpoint."""
    if (path / "config.json").is_file():
        return path
    from nemo_automodel_bard.recipes.pbm import find_final_consolidated

    found = find_final_consolidated(path)
    if found is None:
        raise FileNotFoundError(f"no consolidated checkpoint under {path}")
    return found


def _evaluate(checkpoint: Path, data: Path, limit: int | None, block_size: int, threshold: float,
              max_new_tokens: int, revision: float = 0.0) -> dict:
    from transformers import AutoProcessor

    from nemo_automodel_bard.toy.evaluate import bard_decoder, bard_settings, evaluate, load_bard, load_examples

    examples = load_examples(data / "test.jsonl", limit)
    model, processor = load_bard(checkpoint), AutoProcessor.from_pretrained(str(checkpoint))
    settings = bard_settings(block_size, threshold, revision)
    return asdict(evaluate(checkpoint.name, bard_decoder(model, processor, max_new_tokens, **settings), examples, settings))


def comparisons(rows: list[dict]) -> list[dict]:
    """:data:`COMPARISONS` whose two rows were evaluated: the exact-match difference in points, 95% paired interval."""
    from nemo_automodel_bard.toy.stats import paired_bootstrap_diff

    hits = {r["name"]: r["metrics"]["hits"] for r in rows if r.get("metrics", {}).get("hits")}
    out = []
    for row, against, claim in COMPARISONS:
        if row in hits and against in hits:
            ci = paired_bootstrap_diff(hits[row], hits[against])
            out.append({"row": row, "against": against, "claim": claim, "samples": len(hits[row]),
                        **{k: 100 * ci[k] for k in ("diff", "low", "high")}})
    return out


def _comparison_table(items: list[dict]) -> str:
    lines = ["| claim | row − against | exact match difference (points) | 95% paired interval | samples |",
             "|---|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['row']} − {c['against']} | {c['diff']:+.1f} | [{c['low']:+.1f}, {c['high']:+.1f}] "
              f"| {c['samples']} |" for c in items]
    return "\n".join(lines)


def _trained(path: Path | None) -> bool:
    try:
        return path is not None and _resolve_checkpoint(path) is not None
    except FileNotFoundError:
        return False


def _table(rows: list[dict]) -> str:
    lines = ["| row | what changes | exact match | token acc | TPF | tokens/s | train s | reproduce |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r.get("metrics") or {}

        def cell(key: str, fmt: str, m: dict = m) -> str:
            return fmt.format(m[key]) if key in m else "n/a"

        lines.append(f"| {r['name']} | {r['description']} | {cell('exact_match', '{:.3f}')} | "
                     f"{cell('token_accuracy', '{:.3f}')} | {cell('tpf', '{:.2f}')} | {cell('tokens_per_s', '{:.1f}')} | "
                     f"{'reused' if r.get('reused') else format(r.get('train_s', 0), '.0f')} | "
                     f"`{r['command'] or 'main run (bard demo)'}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the folder of a finished `bard demo` run")
    parser.add_argument("--only", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--pbm-config", type=Path, default=EXAMPLES / "toy_pbm.yaml")
    parser.add_argument("--swd-config", type=Path, default=EXAMPLES / "toy_swd.yaml")
    parser.add_argument("--limit", type=int, default=None, help="test samples to evaluate (default: all)")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--threshold", type=float, default=None,
                        help="confidence threshold of every row (default: the run's val-chosen one, else 0.9)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--revision-threshold", type=float, default=0.0,
                        help=f"also decode {', '.join(REVISED)} with token revision at this threshold (0 = off)")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="overrides added to every training command (e.g. the demo's step counts)")
    args = parser.parse_args(argv)
    run = RunLayout(Path(args.run))
    rows_wanted = set(args.only.split(",")) if args.only else None
    out_dir = run.path("ablations")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    profile = run_profile(run)
    summary = json.loads((run.root / "summary.json").read_text()) if (run.root / "summary.json").is_file() else {}
    threshold = args.threshold if args.threshold is not None else float(summary.get("threshold", 0.9))
    print(f"[ablations] threshold {threshold} on every row", flush=True)
    if profile:  # the demo overrides the YAML's step counts: train the ablations on the same budget
        stages = list(zip((4, 8, 16, 32), profile["pbm_steps"]))
        swd_steps = profile["swd_steps"]
    else:
        stages, swd_steps = pbm_steps(args.pbm_config), None
    rows_all = variants(run, args.pbm_config, args.swd_config, stages, swd_steps, budget_overrides(profile) + args.extra)
    for variant in rows_all:
        if rows_wanted is not None and variant.name not in rows_wanted:
            continue
        row = {"name": variant.name, "description": variant.description, "command": None}
        if variant.recipe is not None:
            command = train_command(variant)
            row["command"] = shlex.join(["bard", *command[3:]])
        if variant.recipe is not None and _trained(variant.checkpoint):
            print(f"[ablation {variant.name}] reusing {variant.checkpoint}", flush=True)
            row["reused"] = True
        elif variant.recipe is not None:
            print(f"[ablation {variant.name}] {row['command']}", flush=True)
            start = time.time()
            result = subprocess.run(command, check=False)
            row["train_s"] = time.time() - start
            if result.returncode != 0:
                row["error"] = f"training failed (exit {result.returncode})"
                print(f"[ablation {variant.name}] FAILED: {row['error']}", file=sys.stderr, flush=True)
                rows.append(row)
                continue
        checkpoint = _resolve_checkpoint(variant.checkpoint)
        row["checkpoint"] = str(checkpoint)
        row["metrics"] = _evaluate(checkpoint, run.path("data"), args.limit, args.block_size, threshold,
                                   args.max_new_tokens)
        rows.append(row)
        if args.revision_threshold and variant.name in REVISED:
            revised = {**row, "name": f"{variant.name}+rev", "reused": True,
                       "description": f"{variant.description}, token revision {args.revision_threshold}",
                       "metrics": _evaluate(checkpoint, run.path("data"), args.limit, args.block_size, threshold,
                                            args.max_new_tokens, args.revision_threshold)}
            rows.append(revised)
        (out_dir / "ablations.json").write_text(json.dumps(rows, indent=1))
    compared = comparisons(rows)
    (out_dir / "ablations.json").write_text(json.dumps({"threshold": threshold, "rows": rows, "comparisons": compared},
                                                       indent=1))
    text = _table(rows) + "\n\n" + _comparison_table(compared) + "\n"
    (out_dir / "ablations.md").write_text(text)
    print(text)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
