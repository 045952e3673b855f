"""Toy evaluation metrics against a hand-computed example, and the AR decoder's counting."""

from __future__ import annotations

import pytest

from nemo_automodel_bard.toy.evaluate import DecodeResult, exact_match, summarize, token_accuracy


def test_exact_match_is_word_level():
    assert exact_match(" 1  2 3 ", "1 2 3")
    assert not exact_match("1 2", "1 2 3")
    assert not exact_match("1 3 2", "1 2 3")


def test_token_accuracy_counts_missing_and_extra_words():
    assert token_accuracy("1 2 3", "1 2 3") == 1.0
    assert token_accuracy("1 9 3", "1 2 3") == pytest.approx(2 / 3)
    assert token_accuracy("1 2", "1 2 3 4") == pytest.approx(2 / 4)  # two missing
    assert token_accuracy("1 2 3 4 5", "1 2 3 4") == pytest.approx(4 / 5)  # one extra
    assert token_accuracy("", "") == 1.0
    assert token_accuracy("", "1") == 0.0


def test_summarize_hand_computed_example():
    refs = ["1 2 3", "red blue", "4 4"]
    tasks = ["read", "colours", "read"]
    results = [
        DecodeResult(text="1 2 3", tokens=4, forwards=2, seconds=0.5),   # exact; 3 words + EOS
        DecodeResult(text="red red", tokens=3, forwards=3, seconds=0.25),  # token acc 1/2
        DecodeResult(text="4", tokens=2, forwards=1, seconds=0.25),       # token acc 1/2
    ]
    m = summarize("x", refs, results, tasks, settings={"block_size": 4})
    assert m.samples == 3
    assert m.exact_match == pytest.approx(1 / 3)
    assert m.token_accuracy == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert (m.tokens, m.forwards) == (9, 6)
    assert m.tpf == pytest.approx(1.5)
    assert m.seconds == pytest.approx(1.0)
    assert m.tokens_per_s == pytest.approx(9.0)
    assert m.per_task == {"colours": 0.0, "read": 0.5}
    assert m.settings == {"block_size": 4}


# ---------------------------------------------------------------- bard eval: arguments, --out lock, no matplotlib
import json  # noqa: E402
import sys  # noqa: E402

from nemo_automodel_bard.toy import evaluate as ev  # noqa: E402
from nemo_automodel_bard.toy.pipeline import ASSET_AR  # noqa: E402
from nemo_automodel_bard.toy.task import generate_splits  # noqa: E402


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    generate_splits(out, sizes={"train": 1, "val": 1, "test": 2})
    return out


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(path):
        raise AssertionError("a model was loaded before the argument checks")

    monkeypatch.setattr(ev, "load_ar", refuse)
    monkeypatch.setattr(ev, "load_bard", refuse)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bard", "nolabel"], "expected LABEL=DIR"),
        (["--bard", f"b4={ASSET_AR}"], "not a Bard-VL checkpoint (model_type 'qwen3_vl')"),
        (["--bard", "b4=/no/such/ckpt"], "--bard b4=/no/such/ckpt: folder not found"),
        (["--block-size", "0"], "--block-size must be a positive integer"),
        (["--limit", "-1"], "--limit must be a positive integer"),
        (["--split", "dev"], "no dev.jsonl there"),
        (["--revision-threshold", "1.5"], "--revision-threshold must be in [0, 1)"),
    ],
)
def test_argument_errors_come_before_any_model_loads(toy_data, capsys, no_model_loading, extra, message):
    assert ev.main(["--data", str(toy_data), "--ar", str(ASSET_AR), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_ar_folder_and_bad_thresholds(toy_data, tmp_path, capsys, no_model_loading):
    assert ev.main(["--data", str(toy_data), "--ar", str(tmp_path / "nope")]) == 2
    assert "--ar" in (err := capsys.readouterr().err) and "folder not found" in err
    with pytest.raises(SystemExit) as exit_info:
        ev.main(["--data", str(toy_data), "--ar", str(ASSET_AR), "--thresholds", "0.5,1.5"])
    assert exit_info.value.code == 2 and "thresholds must lie in [0, 1]" in capsys.readouterr().err


def test_second_run_on_the_same_out_folder_is_refused(toy_data, tmp_path, capsys, no_model_loading):
    out = tmp_path / "out"
    with ev.out_lock(out):  # a first run holds the folder
        assert ev.main(["--data", str(toy_data), "--ar", str(ASSET_AR), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is in use by another bard eval (pid " in err
    assert not (out / "eval.json").exists()


def test_eval_without_matplotlib_writes_results_and_exits_0(toy_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "out"
    assert ev.main(["--data", str(toy_data), "--ar", str(ASSET_AR), "--out", str(out), "--limit", "1",
                    "--max-new-tokens", "8"]) == 0
    assert json.loads((out / "eval.json").read_text())["results"][0]["name"] == "AR"
    assert not (out / "accuracy_vs_throughput.png").exists()
    assert "matplotlib is not installed; skipped the plot" in capsys.readouterr().err
    with ev.out_lock(out):  # the finished run released its lock
        pass

@pytest.fixture(scope="module")
def shipped_models(tmp_path_factory):
    """The shipped AR checkpoint, a Bard-VL converted from it, its processor, and 6 test prompts."""
    from nemo_automodel_bard.models.bard_vl.convert import convert
    from nemo_automodel_bard.toy.evaluate import load_ar, load_bard, load_examples
    from nemo_automodel_bard.toy.pipeline import ASSET_AR
    from nemo_automodel_bard.toy.task import generate_splits

    root = tmp_path_factory.mktemp("toy_eval")
    generate_splits(root / "data", seed=0, sizes={"train": 0, "val": 0, "test": 6})
    ar, processor = load_ar(ASSET_AR)
    bard_path = convert(ASSET_AR, root / "bard", mask_token_id=7, mask_token="<|mask|>", block_size=4)
    return ar, load_bard(bard_path), processor, load_examples(root / "data" / "test.jsonl")


def test_batched_decoding_equals_batch_1(shipped_models):
    """evaluate() batches prompts (left-padded); outputs, tokens and forwards must not change."""
    from nemo_automodel_bard.toy.evaluate import ar_decoder, bard_decoder, evaluate

    ar, bard, processor, examples = shipped_models
    settings = dict(block_size=4, denoising_steps=4, confidence_threshold=0.5, temperature=0.0)
    for decode in (ar_decoder(ar, processor, 24), bard_decoder(bard, processor, 24, **settings)):
        alone = [decode([e])[0] for e in examples]
        batched = decode(examples)
        assert [r.text for r in batched] == [r.text for r in alone]
        assert [(r.tokens, r.forwards) for r in batched] == [(r.tokens, r.forwards) for r in alone]
        m = evaluate("x", decode, examples, batch_size=4, progress=False)
        assert m.hits == [int(exact_match(r.text, e["answer"])) for r, e in zip(alone, examples)]
        assert m.settings["batch_size"] == 4 and m.samples == 6


def test_timed_speedups_reports_both_batch_sizes(shipped_models):
    from nemo_automodel_bard.toy.evaluate import ar_decoder, bard_decoder, timed_speedups

    ar, bard, processor, examples = shipped_models
    settings = dict(block_size=4, denoising_steps=4, confidence_threshold=0.5, temperature=0.0)
    out = timed_speedups(ar_decoder(ar, processor, 16), bard_decoder(bard, processor, 16, **settings), examples[:4],
                         batch_sizes=(1, 2), repeats=2)
    assert set(out) == {"batch_1", "batch_2"}
    for entry in out.values():
        assert len(entry["speedup"]["values"]) == 2 and entry["speedup"]["median"] > 0
        assert entry["ar_tokens_per_s"]["median"] > 0 and entry["prompts"] == 4
    # the timed prompts' TPF is the same decode's, alone
    alone = bard_decoder(bard, processor, 16, **settings)(examples[:4])
    expected = sum(r.tokens for r in alone) / sum(r.forwards for r in alone)
    assert out["batch_1"]["bard_tpf"] == pytest.approx(expected)
