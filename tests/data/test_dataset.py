"""Reading chat rows (jsonl and save_to_disk) through the processor; bad rows; max_length."""

from __future__ import annotations

import json

import pytest
import torch

from nemo_automodel_bard.data.chat import BadSampleError
from nemo_automodel_bard.data.collate import bard_collate, response_pad_token_id
from nemo_automodel_bard.data.dataset import BardChatDataset
from nemo_automodel_bard.diffusion.layout import layout_position_ids
from nemo_automodel_bard.testing import TINY_IDS, tiny_image, tiny_model, tiny_processor


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def _row(image="img0.png", answer="It is red.", question="Colour?"):
    user = [{"type": "text", "text": question}]
    if image is not None:
        user.insert(0, {"type": "image", "image": image})
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": [{"type": "text", "text": answer}]}]}


def _video_row(video, answer="It moves."):
    # min/max_pixels keep qwen-vl-utils at 16x16 frames (its default floor is 128 tokens a frame).
    item = {"type": "video", "video": video, "min_pixels": 256, "max_pixels": 256}
    user = [item, {"type": "text", "text": "What happens?"}]
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _frames(tmp_path, n=3):
    for i in range(n):
        tiny_image(10 + i).save(tmp_path / f"frame{i}.png")
    return [f"frame{i}.png" for i in range(n)]


def _write(tmp_path, rows, name="train.jsonl"):
    tiny_image(0).save(tmp_path / "img0.png")
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _decode(processor, ids):
    return processor.tokenizer.decode(ids, skip_special_tokens=False)


def test_prompt_and_last_assistant_turn(tmp_path, processor):
    multi = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": "img0.png"}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "And now?"},
        {"role": "assistant", "content": [{"type": "text", "text": "second answer"}]},
    ]}
    ds = BardChatDataset(_write(tmp_path, [multi]), processor=processor, block_size=4)
    sample = ds[0]
    prompt, response = _decode(processor, sample["prompt_ids"]), _decode(processor, sample["response_ids"])
    assert response == "second answer<|im_end|>"
    assert prompt.endswith("<|im_start|>assistant\n") and "first answer<|im_end|>" in prompt  # earlier turns = prompt
    n_image = int((sample["prompt_ids"] == TINY_IDS["image"]).sum())
    assert n_image == int(sample["image_grid_thw"].prod()) // 4 and n_image > 0
    assert torch.equal(sample["mm_token_type_ids"], (sample["prompt_ids"] == TINY_IDS["image"]).long())
    assert sample["source"].endswith("train.jsonl:1")


def test_messages_as_json_string_and_save_to_disk(tmp_path, processor):
    datasets = pytest.importorskip("datasets")
    tiny_image(0).save(tmp_path / "img0.png")
    data = datasets.Dataset.from_dict({"messages": [json.dumps(_row()["messages"]), json.dumps(_row(answer="No.")["messages"])]})
    data.save_to_disk(str(tmp_path / "arrow"))
    ds = BardChatDataset(str(tmp_path / "arrow"), root_dir=str(tmp_path), processor=processor)
    assert len(ds) == 2 and _decode(processor, ds[1]["response_ids"]) == "No.<|im_end|>"
    assert ds[1]["source"].endswith("[row 1]")


@pytest.mark.parametrize(
    "bad, reason",
    [
        (_row(image="missing.png"), "missing image file"),
        (_video_row("clip.mp4"), r"missing video file .*clip\.mp4"),
        ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
        ({"nothing": 1}, "missing or empty 'messages'"),
    ],
)
def test_bad_rows_fail_fast_with_file_and_line(tmp_path, bad, reason):
    path = _write(tmp_path, [_row(), bad])
    with pytest.raises(BadSampleError, match=rf"train\.jsonl:2: .*{reason}"):
        BardChatDataset(path)


def test_bad_rows_are_skipped_and_counted(tmp_path, processor):
    path = _write(tmp_path, [_row(), _row(image="missing.png"), {"messages": []}, _row(answer="last")])
    ds = BardChatDataset(path, on_bad_sample="skip", processor=processor)
    assert len(ds) == 2
    assert sum(v for k, v in ds.stats.items() if k.startswith("skipped")) == 2


def test_unreadable_image_errors_or_skips_at_read_time(tmp_path, processor):
    path = _write(tmp_path, [_row(image="broken.png"), _row(answer="good")])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(BadSampleError, match=r"train\.jsonl:1: unreadable image"):
        BardChatDataset(path, processor=processor)[0]
    skipping = BardChatDataset(path, processor=processor, on_bad_sample="skip")
    assert _decode(processor, skipping[0]["response_ids"]) == "good<|im_end|>"  # replaced by the next row
    assert skipping.stats["skipped: unreadable image"] == 1


def test_max_length_bounds_prompt_plus_response_not_the_doubled_layout(tmp_path, processor, caplog):
    long_answer = "x" * 60
    path = _write(tmp_path, [_row(answer=long_answer), _row(answer="ok")])
    full = BardChatDataset(path, processor=processor, block_size=4)[0]
    prompt_len, response_len = full["prompt_ids"].numel(), full["response_ids"].numel()
    # Exactly P + R: kept whole, although its layout P + 2R is almost twice the limit.
    exact = BardChatDataset(path, processor=processor, block_size=4, max_length=prompt_len + response_len)
    assert torch.equal(exact[0]["response_ids"], full["response_ids"]) and not exact.stats
    # One token over: truncated in the response only, with a named, counted warning.
    limit = prompt_len + response_len - 1
    truncated = BardChatDataset(path, processor=processor, block_size=4, max_length=limit)
    with caplog.at_level("WARNING"):
        sample = truncated[0]
    assert torch.equal(sample["prompt_ids"], full["prompt_ids"])  # vision tokens untouched
    assert torch.equal(sample["response_ids"], full["response_ids"][: response_len - 1])
    assert truncated.stats["truncated"] == 1
    assert "max_length: truncated the response" in caplog.text and "1 truncated, 0 dropped so far" in caplog.text
    dropping = BardChatDataset(path, processor=processor, block_size=4, max_length=limit, too_long="drop")
    assert _decode(processor, dropping[0]["response_ids"]) == "ok<|im_end|>"  # replaced by the next row
    assert dropping.stats["dropped: too long"] == 1
    # A prompt that alone reaches the limit cannot be truncated: dropped.
    no_room = BardChatDataset(path, processor=processor, block_size=4, max_length=prompt_len)
    with pytest.raises(RuntimeError, match="every row was skipped or dropped"):
        no_room[0]
    assert no_room.stats["dropped: too long"] == 2 and not no_room.stats["truncated"]


def test_collate_packs_dataset_items(tmp_path, processor):
    path = _write(tmp_path, [_row(answer="a"), _row(answer="bb bb"), _row(answer="ccc ccc ccc")])
    ds = BardChatDataset(path, processor=processor, block_size=4)
    batch = bard_collate([ds[i] for i in range(3)], processor, block_size=4, pack_size=1024)
    assert batch["input_ids"].shape[0] == 1 and batch["num_samples"] == 3
    assert batch["image_grid_thw"].shape == (3, 3) and batch["sample_num_images"].tolist() == [1, 1, 1]
    assert response_pad_token_id(processor) == TINY_IDS["eos"]


def test_video_frames_reach_the_batch_and_positions(tmp_path, processor):
    path = _write(tmp_path, [_video_row(_frames(tmp_path)), _row()])
    ds = BardChatDataset(path, processor=processor, block_size=4)
    video, image = ds[0], ds[1]
    grid = video["video_grid_thw"]
    assert grid.tolist() == [[2, 4, 4]]  # 3 frames padded to 4, temporal patch 2; 16x16 frames, patch 4
    is_video = video["prompt_ids"] == TINY_IDS["video"]
    assert int(is_video.sum()) == int(grid.prod()) // 4
    assert torch.equal(video["mm_token_type_ids"], 2 * is_video.long())
    assert "<0.2 seconds>" in _decode(processor, video["prompt_ids"])  # timestamps from the 2 fps metadata

    batch = bard_collate([video, image], processor, block_size=4, pack_size=1024)
    assert batch["sample_num_videos"].tolist() == [1, 0] and batch["sample_num_images"].tolist() == [0, 1]
    assert torch.equal(batch["video_grid_thw"], grid)
    assert torch.equal(batch["pixel_values_videos"], video["pixel_values_videos"])
    model = tiny_model()
    pos = layout_position_ids(batch, model.rope_positions)
    for row, start, p, r in batch["samples"].tolist():
        assert torch.equal(pos[:, row, start + p : start + p + r], pos[:, row, start + p + r : start + p + 2 * r])
    row, start, p, _ = batch["samples"][0].tolist()
    assert torch.equal(batch["mm_token_type_ids"][row, start : start + p], video["mm_token_type_ids"])
    alone, _ = model.rope_positions(video["prompt_ids"][None], video["mm_token_type_ids"][None], None, grid)
    assert torch.equal(pos[:, row, start : start + p], alone[:, 0])
    assert not torch.equal(pos[1, row, start : start + p], pos[2, row, start : start + p])  # 3-D video ids


def test_unreadable_video_errors_or_skips_at_read_time(tmp_path, processor):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _write(tmp_path, [_video_row(["broken.png"]), _row(answer="good")])
    with pytest.raises(BadSampleError, match=r"train\.jsonl:1: unreadable video"):
        BardChatDataset(path, processor=processor)[0]
    skipping = BardChatDataset(path, processor=processor, on_bad_sample="skip")
    assert _decode(processor, skipping[0]["response_ids"]) == "good<|im_end|>"
    assert skipping.stats["skipped: unreadable video"] == 1


def _with_bad_bytes(path, lineno):
    """Replace line ``lineno`` of a jsonl with a row holding a Latin-1 byte (not UTF-8)."""
    lines = path.read_bytes().splitlines(keepends=True)
    lines[lineno - 1] = json.dumps(_row(answer="caf_")).encode().replace(b"caf_", b"caf\xe9") + b"\n"
    path.write_bytes(b"".join(lines))
    return path


def test_non_utf8_line_is_a_bad_row_with_file_and_line(tmp_path, processor):
    path = _with_bad_bytes(_write(tmp_path, [_row(), _row(), _row(answer="last")]), 2)
    with pytest.raises(BadSampleError, match=r"train\.jsonl:2: not UTF-8 \(byte 0xe9"):
        BardChatDataset(path)
    skipping = BardChatDataset(path, on_bad_sample="skip", processor=processor)
    assert len(skipping) == 2 and skipping.stats["skipped: not UTF-8"] == 1
    assert _decode(processor, skipping[1]["response_ids"]) == "last<|im_end|>"


def test_skipped_rows_are_counted_once_over_epochs_and_summarised(tmp_path, processor):
    path = _write(tmp_path, [_row(image="broken.png"), _row(answer="good"), _row(answer="also")])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = BardChatDataset(path, processor=processor, on_bad_sample="skip")
    for _epoch in range(3):
        answers = [_decode(processor, dataset[i]["response_ids"]) for i in range(len(dataset))]
        assert answers == ["good<|im_end|>", "good<|im_end|>", "also<|im_end|>"]
    assert dataset.stats == {"skipped: unreadable image": 1}
    assert dataset.summary() == "BardChatDataset: 3 rows; skipped: unreadable image: 1"


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_video_files_reach_the_sample(tmp_path, processor, suffix):
    from nemo_automodel_bard.testing import write_tiny_video

    write_tiny_video(tmp_path / f"clip{suffix}", frames=8, fps=4)
    sample = BardChatDataset(_write(tmp_path, [_video_row(f"clip{suffix}")]), processor=processor)[0]
    grid = sample["video_grid_thw"]
    assert grid.tolist() == [[2, 4, 4]]  # 2 s at 2 fps = 4 frames, temporal patch 2; 16x16 frames, patch 4
    assert int((sample["prompt_ids"] == TINY_IDS["video"]).sum()) == int(grid.prod()) // 4
    assert sample["pixel_values_videos"].shape[0] == int(grid.prod())
    # timestamps from the decoded file: frames 0, 2, 5, 7 of 8 at 4 fps, averaged per temporal patch
    assert "<0.2 seconds>" in _decode(processor, sample["prompt_ids"]) and "<1.5 seconds>" in _decode(processor, sample["prompt_ids"])
