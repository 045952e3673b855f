"""Which processor class a checkpoint's files name, and renaming it to ``BardVLProcessor``.

``AutoProcessor.from_pretrained(dir)`` builds the class named by ``processor_class`` in the
first of these files that names one, and (transformers 5.18 ``processor_class_from_name``)
looks that name up among transformers' own classes before registered ones. Released Bard-VL
checkpoints copied their processor files from Qwen3-VL, so they name ``Qwen3VLProcessor`` and
``AutoProcessor`` returns transformers' class, which rejects the ``video_kwargs`` qwen-vl-utils
returns (the model card's snippet). Renaming the class in those files (``bard convert
--processor-only DIR``) is all it takes; nothing else in them differs.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = [
    "PROCESSOR_FILES",
    "STOCK_PROCESSOR",
    "BARD_PROCESSOR",
    "named_processor_classes",
    "rename_stock_processor",
    "stock_processor_file",
    "warn_if_stock_processor",
]

logger = logging.getLogger(__name__)

# In the order AutoProcessor reads them (processing_auto.py); the first naming a class decides.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "tokenizer_config.json")
STOCK_PROCESSOR = "Qwen3VLProcessor"
BARD_PROCESSOR = "BardVLProcessor"
FIX_COMMAND = "bard convert --processor-only"

_STOCK_VALUE = re.compile(r'("processor_class"\s*:\s*)"' + STOCK_PROCESSOR + '"')


def named_processor_classes(model_dir: str | Path) -> dict[str, str | None]:
    """``{file name: processor_class or None}`` for the processor files present in ``model_dir``.

    Raises:
        ValueError: a file is not a JSON object (the message names it).
    """
    return {name: _processor_class(Path(model_dir) / name) for name in PROCESSOR_FILES
            if (Path(model_dir) / name).is_file()}


def _processor_class(path: Path) -> str | None:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data.get("processor_class")


def rename_stock_processor(model_dir: str | Path) -> list[Path]:
    """Rename ``Qwen3VLProcessor`` to ``BardVLProcessor`` in ``model_dir``'s processor files.

    Only the value changes: every other byte of each file stays as it was (a file whose layout
    defeats that is rewritten as the same JSON with the new name). Each file is written to a
    temporary sibling and moved over the original, so a reader sees the old or the new file,
    never half of one. Returns the files changed (none when run again).
    """
    paths = [Path(model_dir) / name for name, cls in named_processor_classes(model_dir).items() if cls == STOCK_PROCESSOR]
    renamed = [(path, _renamed(path.read_bytes().decode("utf-8"))) for path in paths]  # all read before any write
    for path, text in renamed:
        _replace_atomically(path, text.encode("utf-8"))
    return paths


def _renamed(text: str) -> str:
    expected = {**json.loads(text), "processor_class": BARD_PROCESSOR}
    new, count = _STOCK_VALUE.subn(lambda m: m.group(1) + f'"{BARD_PROCESSOR}"', text)
    if count == 1 and json.loads(new) == expected:
        return new
    # e.g. a nested object also naming the class: only the top-level value is ours to change.
    return json.dumps(expected, indent=2, ensure_ascii=False) + "\n"


def _replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)  # mkstemp's 0600 would otherwise stick
        os.replace(tmp, path)  # a symlink (HF cache snapshot) becomes a plain file; the blob is untouched
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def stock_processor_file(model_dir: str | Path) -> str | None:
    """The file that makes ``AutoProcessor`` build ``Qwen3VLProcessor`` for ``model_dir``, or None."""
    try:
        return _stock_if_deciding(named_processor_classes(model_dir))
    except ValueError:
        return None  # AutoProcessor will report the broken file itself


def _stock_if_deciding(classes: dict[str, str | None]) -> str | None:
    """The file naming ``Qwen3VLProcessor`` if it is the one AutoProcessor follows, else None.

    AutoProcessor's order: processor_config.json, then preprocessor_config.json (or, only when
    that file is absent, video_preprocessor_config.json), then tokenizer_config.json; the
    first that names a class decides. None named: ``model_type`` decides (BardVLProcessor).
    """
    image_or_video = "preprocessor_config.json" if "preprocessor_config.json" in classes else "video_preprocessor_config.json"
    order = ("processor_config.json", image_or_video, "tokenizer_config.json")
    deciding = next((name for name in order if classes.get(name) is not None), None)
    return deciding if deciding is not None and classes[deciding] == STOCK_PROCESSOR else None


_STOCK_PROCESSOR_EXPECTED: contextvars.ContextVar[bool] = contextvars.ContextVar("stock_processor_expected", default=False)


@contextlib.contextmanager
def stock_processor_expected() -> Iterator[None]:
    """Loads inside this block skip the warning: for the project's own tools (``bard generate``,
    the lmms-eval runner), which never pass qwen-vl-utils' video kwargs to the processor, so the
    stock class serves them."""
    token = _STOCK_PROCESSOR_EXPECTED.set(True)
    try:
        yield
    finally:
        _STOCK_PROCESSOR_EXPECTED.reset(token)


def warn_if_stock_processor(model_id: str | os.PathLike | None, subfolder: str = "") -> bool:
    """Log one warning when ``model_id``'s processor files name ``Qwen3VLProcessor``.

    Reads only the small JSON files: of a local directory, or of a hub id's files already in
    the local Hugging Face cache (no download). Returns whether it warned.
    """
    if model_id is None or _STOCK_PROCESSOR_EXPECTED.get():
        return False
    local = Path(model_id) / subfolder
    if local.is_dir():
        name = stock_processor_file(local)
        if name is None:
            return False
        logger.warning(
            "%s names processor_class %r, so AutoProcessor.from_pretrained(%r) builds transformers' %s, "
            "which rejects the video_kwargs qwen-vl-utils returns (the Bard-VL model card's snippet fails with "
            "StrictDataclassFieldValidationError on 'fps'). Run once: %s %s (renames it to %s in place), "
            "or load the processor with nemo_automodel_bard.BardVLProcessor.from_pretrained(...).",
            local / name, STOCK_PROCESSOR, str(model_id), STOCK_PROCESSOR, FIX_COMMAND, local, BARD_PROCESSOR,
        )
        return True
    name = _cached_stock_processor_file(str(model_id), subfolder)
    if name is None:
        return False
    logger.warning(
        "%s of %s names processor_class %r, so AutoProcessor builds transformers' %s, which rejects the "
        "video_kwargs qwen-vl-utils returns (the Bard-VL model card's snippet). Download the checkpoint "
        "(hf download %s --local-dir DIR) and run once: %s DIR, or load the processor with "
        "nemo_automodel_bard.BardVLProcessor.from_pretrained(%r).",
        name, model_id, STOCK_PROCESSOR, STOCK_PROCESSOR, model_id, FIX_COMMAND, str(model_id),
    )
    return True


def _cached_stock_processor_file(repo_id: str, subfolder: str) -> str | None:
    """``stock_processor_file`` over a hub id's files already in the local cache."""
    from huggingface_hub import try_to_load_from_cache

    classes = {}
    for name in PROCESSOR_FILES:
        try:
            path = try_to_load_from_cache(repo_id, f"{subfolder}/{name}" if subfolder else name)
            if isinstance(path, str):  # else not cached, or cached as missing
                classes[name] = _processor_class(Path(path))
        except ValueError:  # not a repo id (e.g. a missing local path), or a broken file: not ours to report
            return None
    return _stock_if_deciding(classes)
