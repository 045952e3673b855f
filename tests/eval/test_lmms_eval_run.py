"""The real lmms-eval evaluator runs ``bard_vl`` on the toy task and agrees with ``bard eval``.

Part of the default suite: lmms-eval is installed by ``scripts/setup_venv.sh`` (the ``eval``
extra), so a broken lmms-eval install (e.g. filelock 4, which 0.7.3 cannot import) fails here.
The models are the shipped toy AR source and its ``bard convert`` output, on 6 test samples.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval missing: install the eval extra (scripts/setup_venv.sh does)")

from lmms_eval.evaluator import simple_evaluate  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402

from nemo_automodel_bard.eval import __main__ as launcher  # noqa: E402
from nemo_automodel_bard.eval.lmms_model import BardVL  # noqa: E402
from nemo_automodel_bard.eval.toy_task import TASK_NAME, write_task  # noqa: E402
from nemo_automodel_bard.models.bard_vl.convert import convert  # noqa: E402
from nemo_automodel_bard.toy import evaluate as bard_eval  # noqa: E402
from nemo_automodel_bard.toy.pipeline import ASSET_AR  # noqa: E402
from nemo_automodel_bard.toy.task import generate_splits  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MAX_NEW_TOKENS = 32
BARD_SETTINGS = dict(block_size=4, denoising_steps=4, remasking_strategy="low_confidence_dynamic",
                     confidence_threshold=0.5, temperature=0.0)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Toy data (6 test samples), the lmms-eval task over them, and the Bard-VL conversion of the AR source."""
    root = tmp_path_factory.mktemp("lmms_toy")
    generate_splits(root / "data", seed=11, sizes={"train": 1, "val": 1, "test": 6})
    write_task(root / "data", root / "task", max_new_tokens=MAX_NEW_TOKENS)
    convert(ASSET_AR, root / "bard", mask_token_id=7, mask_token="<|mask|>", block_size=4)
    return root


def _lmms_eval(model: BardVL, toy) -> dict:
    """``simple_evaluate`` on the bard_toy task only (lmms-eval's ~2000 bundled tasks are not indexed)."""
    manager = TaskManager("WARNING", include_path=str(toy / "task"), include_defaults=False)
    return simple_evaluate(model=model, tasks=[TASK_NAME], task_manager=manager, log_samples=True,
                           bootstrap_iters=0, process_docs_parallel=1, verbosity="WARNING")


def _answers(results: dict) -> list[str]:
    samples = sorted(results["samples"][TASK_NAME], key=lambda s: s["doc_id"])
    return [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in samples]


def _bard_eval(decode, toy) -> tuple[list[str], float]:
    examples = bard_eval.load_examples(toy / "data" / "test.jsonl")
    results = [result for example in examples for result in decode([example])]  # batch 1, as bard eval's reference
    metrics = bard_eval.summarize("ref", [e["answer"] for e in examples], results)
    return [r.text for r in results], metrics.exact_match


def test_bard_vl_through_lmms_eval_equals_bard_eval(toy):
    model = BardVL.create_from_arg_string(
        f"pretrained={toy / 'bard'},block_size=4,denoising_steps=4,confidence_threshold=0.5,device=cpu,dtype=float32",
        {"batch_size": "4", "device": None},
    )
    batched = _lmms_eval(model, toy)
    texts, exact = _bard_eval(bard_eval.bard_decoder(model.runner.model, model.runner.processor, MAX_NEW_TOKENS,
                                                     **BARD_SETTINGS), toy)
    assert _answers(batched) == texts
    assert any(texts)  # the converted AR model says something, so equality is not vacuous
    assert batched["results"][TASK_NAME]["exact_match,none"] == pytest.approx(exact)
    assert batched["n-samples"][TASK_NAME]["effective"] == 6
    counts = [s["token_counts"][0] for s in batched["samples"][TASK_NAME]]
    assert all(c["output_tokens"] >= 1 and c["input_tokens"] > 1 for c in counts)
    throughput = batched["throughput"]
    assert throughput["total_gen_tokens"] == sum(c["output_tokens"] for c in counts)
    assert throughput["avg_tokens_per_forward"] >= 1.0 and throughput["avg_speed"] > 0

    model.batch_size = 1
    assert _answers(_lmms_eval(model, toy)) == texts


def test_ar_source_through_lmms_eval_equals_bard_eval(toy):
    model = BardVL.create_from_arg_string(f"pretrained={ASSET_AR},decoding=ar,dtype=float32", {"batch_size": "3",
                                                                                            "device": "cpu"})
    results = _lmms_eval(model, toy)
    texts, exact = _bard_eval(bard_eval.ar_decoder(model.runner.model, model.runner.processor, MAX_NEW_TOKENS), toy)
    assert _answers(results) == texts
    assert results["results"][TASK_NAME]["exact_match,none"] == pytest.approx(exact)
    assert exact > 0  # the shipped AR source answers some toy questions exactly
    assert results["throughput"]["avg_tokens_per_forward"] == 1.0


def test_batch_size_options_are_checked(toy, monkeypatch):
    with pytest.raises(ValueError, match="integer --batch_size >= 1.*auto is not supported"):
        BardVL.create_from_arg_string(f"pretrained={toy / 'bard'}", {"batch_size": "auto"})
    with pytest.raises(ValueError, match="model_args batch_size=4 is not a bard_vl model arg.*--batch_size"):
        BardVL.create_from_arg_string(f"pretrained={toy / 'bard'},batch_size=4", {"batch_size": "1"})
    with pytest.raises(ValueError, match="--device cuda and model_args device=cpu disagree"):
        BardVL.create_from_arg_string(f"pretrained={toy / 'bard'},device=cpu", {"device": "cuda"})
    monkeypatch.setenv("WORLD_SIZE", "2")  # lmms-eval would shard by rank; the wrapper does not, so it refuses
    with pytest.raises(NotImplementedError, match="single process"):
        BardVL.create_from_arg_string(f"pretrained={toy / 'bard'}", {"batch_size": "1"})


def test_launcher_exits_nonzero_when_lmms_eval_swallows_an_error(toy, tmp_path, capsys, monkeypatch):
    """lmms-eval logs the model's ValueError and carries on; the launcher's exit status says it failed.

    lmms-eval's CLI indexes its ~2000 bundled task YAMLs first (20-40 s here); only that index is
    narrowed to the toy task, the rest is the real CLI (``-m slow`` runs it unchanged in a subprocess).
    """
    import lmms_eval.__main__ as lmms_main

    monkeypatch.setattr(lmms_main, "TaskManager", functools.partial(TaskManager, include_defaults=False))
    code = launcher.main(["--model", "bard_vl", "--include_path", str(toy / "task"), "--tasks", TASK_NAME,
                          "--output_path", str(tmp_path / "out"), "--verbosity", "WARNING",
                          "--model_args", f"pretrained={toy / 'bard'},confidence_treshold=0.5"])
    assert code == launcher.EXIT_EVAL_FAILED
    assert "unknown bard_vl model_args ['confidence_treshold']" in capsys.readouterr().err
    assert not list((tmp_path / "out").rglob("*results*.json"))


def test_toy_task_yaml_decodes_like_bard_eval(toy):
    text = (toy / "task" / f"{TASK_NAME}.yaml").read_text()
    kwargs = json.loads(next(line for line in text.splitlines() if line.startswith("generation_kwargs")).split(": ", 1)[1])
    assert kwargs == {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "until": []}


def _cli(command: list[str], toy, out, model_args: str, batch_size: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [*command, "--model", "bard_vl", "--include_path", str(toy / "task"), "--tasks", TASK_NAME,
           "--batch_size", str(batch_size), "--output_path", str(out), "--log_samples", "--model_args", model_args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, check=False)


@pytest.mark.slow
def test_cli_batched_run_and_exit_codes(toy, tmp_path):
    """The real CLIs in subprocesses (each indexes lmms-eval's bundled tasks: minutes on 2 CPU cores).

    ``lmms-eval`` finds ``bard_vl`` through the entry point and scores what ``bard eval`` scores;
    a bad model arg exits 0 from ``lmms-eval`` itself but 1 from the project's launcher.
    """
    lmms_cli = [str(Path(sys.executable).parent / "lmms-eval")]
    good = f"pretrained={toy / 'bard'},block_size=4,denoising_steps=4,confidence_threshold=0.5,device=cpu,dtype=float32"
    proc = _cli(lmms_cli, toy, tmp_path / "ok", good, batch_size=8)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[bard_vl] throughput (bard, batch_size 8)" in proc.stdout
    (results_file,) = (tmp_path / "ok").rglob("*_results.json")
    results = json.loads(results_file.read_text())
    model = BardVL.create_from_arg_string(good, {"batch_size": "1"})
    _, exact = _bard_eval(bard_eval.bard_decoder(model.runner.model, model.runner.processor, MAX_NEW_TOKENS,
                                                 **BARD_SETTINGS), toy)
    assert results["results"][TASK_NAME]["exact_match,none"] == pytest.approx(exact)

    bad = f"pretrained={toy / 'bard'},remasking_strategy=random"
    swallowed = _cli(lmms_cli, toy, tmp_path / "bad1", bad, batch_size=1)
    assert swallowed.returncode == 0 and "Error during evaluation" in swallowed.stdout  # lmms-eval's own behaviour
    loud = _cli([sys.executable, "-m", "nemo_automodel_bard.eval"], toy, tmp_path / "bad2", bad, batch_size=1)
    assert loud.returncode == launcher.EXIT_EVAL_FAILED
    assert "remasking_strategy must be one of" in loud.stderr
