"""``bard-convert``: autoregressive Qwen3-VL checkpoint -> Bard-VL initial checkpoint.

Weights are copied byte for byte (block-diffusion training starts from the AR weights);
``config.json`` is rewritten (``model_type: bard_vl``, our architecture, ``mask_token_id``,
``block_size``, ``prompt_attention``) and the mask token is registered in the tokenizer at
``mask_token_id`` (a spare embedding row, 151671 for stock Qwen3-VL, as upstream).

    bard-convert --from Qwen3-VL-4B-Instruct --to bard-init [--mask-token-id 151671]
                 [--mask-token '<|mask|>'] [--block-size 4] [--prompt-attention block] [--overwrite]

``--mask-token STR`` alone uses the id the source tokenizer already gives STR (an error if it
has none); with ``--mask-token-id`` STR is registered at that id. The checkpoint is written
into a temporary sibling folder and moved into place, so ``--overwrite`` leaves exactly the
new checkpoint (no stale shards of an earlier conversion) and a failed run leaves ``--to`` as it was.

    bard-convert --processor-only Bard-VL-4B

prepares a downloaded (released) Bard-VL checkpoint in place for ``AutoProcessor``: its
processor files, copied from Qwen3-VL, name ``Qwen3VLProcessor``; this renames the class to
``BardVLProcessor`` and changes nothing else (see ``use_bard_processor``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from nemo_automodel_bard.models.bard_vl.configuration import DEFAULT_MASK_TOKEN_ID, PROMPT_ATTENTION_CHOICES
from nemo_automodel_bard.models.bard_vl.processor_files import (
    BARD_PROCESSOR,
    PROCESSOR_FILES,
    STOCK_PROCESSOR,
    named_processor_classes,
    rename_stock_processor,
)

__all__ = ["convert", "use_bard_processor", "main", "ConversionError"]

DEFAULT_MASK_TOKEN = "<|mask|>"


class ConversionError(ValueError):
    """The source cannot be turned into a Bard-VL checkpoint (message says why)."""


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConversionError(f"{model_dir} is not a checkpoint directory: no config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise ConversionError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def _read_source_config(source: Path) -> dict:
    config = _read_config(source)
    model_type = config.get("model_type")
    if model_type == "bard_vl":
        raise ConversionError(f"{source} is already a Bard-VL checkpoint (model_type 'bard_vl')")
    if model_type != "qwen3_vl":
        raise ConversionError(
            f"{source} is not a Qwen3-VL checkpoint: model_type is {model_type!r}, expected 'qwen3_vl' "
            f"(architectures {config.get('architectures')})"
        )
    if not any(p.name.endswith(".safetensors") for p in source.iterdir()):
        raise ConversionError(f"{source} has no *.safetensors weights")
    return config


def _check_mask_id(config: dict, mask_token_id: int, mask_token: str, tokenizer) -> None:
    """Refuse ids outside the embedding table or used by a config special or another token."""
    vocab = config.get("text_config", {}).get("vocab_size", config.get("vocab_size"))
    if vocab is None or not 0 <= mask_token_id < vocab:
        raise ConversionError(f"mask_token_id {mask_token_id} is outside the embedding table [0, {vocab})")
    text = config.get("text_config", {})
    specials = {
        key: value
        for key, value in {**text, **config}.items()
        if key.endswith("_token_id") and isinstance(value, int)
    }
    for key, value in specials.items():
        if value == mask_token_id:
            raise ConversionError(f"mask_token_id {mask_token_id} collides with {key} in config.json")
    if tokenizer is None:
        return
    existing = tokenizer.convert_ids_to_tokens(mask_token_id)
    if existing is not None and existing != mask_token:
        raise ConversionError(f"mask_token_id {mask_token_id} is already the tokenizer's token {existing!r}")
    by_string = tokenizer.convert_tokens_to_ids(mask_token)
    if by_string is not None and by_string != tokenizer.unk_token_id and by_string != mask_token_id:
        raise ConversionError(f"mask token {mask_token!r} already exists in the tokenizer with id {by_string}")


def _special(token_id: int, content: str) -> dict:
    return {
        "id": token_id,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def _register_mask_token(target: Path, mask_token_id: int, mask_token: str, tokenizer_len: int) -> None:
    """Add the mask token at exactly ``mask_token_id`` (tokenizer.json + tokenizer_config.json).

    The tokenizers library numbers added tokens contiguously, so ids between the current
    vocabulary end and ``mask_token_id`` (151669, 151670 for stock Qwen3) get placeholder
    specials ``<|bard_reserved_N|>``; they are never produced by encoding ordinary text.
    """
    entries = [_special(i, f"<|bard_reserved_{i}|>") for i in range(tokenizer_len, mask_token_id)]
    entries.append(_special(mask_token_id, mask_token))
    new_ids = {e["id"] for e in entries}
    tokenizer_json = target / "tokenizer.json"
    data = json.loads(tokenizer_json.read_text())
    added = [t for t in data.get("added_tokens", []) if t["id"] not in new_ids]
    data["added_tokens"] = sorted(added + entries, key=lambda t: t["id"])
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    config_path = target / "tokenizer_config.json"
    if config_path.is_file():
        tok_config = json.loads(config_path.read_text())
        decoder = tok_config.setdefault("added_tokens_decoder", {})
        for entry in entries:
            decoder[str(entry["id"])] = {k: v for k, v in entry.items() if k != "id"}
        tok_config["mask_token"] = mask_token
        config_path.write_text(json.dumps(tok_config, ensure_ascii=False, indent=2))


def _load_tokenizer(path: Path):
    if not (path / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def _resolve_mask_token(mask_token_id: int | None, mask_token: str | None, tokenizer) -> tuple[int, str]:
    """(id, string) of the mask token: defaults, or ``mask_token`` looked up in the source tokenizer."""
    if mask_token is None:
        return (DEFAULT_MASK_TOKEN_ID if mask_token_id is None else mask_token_id), DEFAULT_MASK_TOKEN
    if mask_token_id is not None:
        return mask_token_id, mask_token
    if tokenizer is None:
        raise ConversionError(
            f"--mask-token {mask_token!r} without --mask-token-id needs the source tokenizer (no tokenizer.json); "
            "pass --mask-token-id"
        )
    found = tokenizer.convert_tokens_to_ids(mask_token)
    if found is None or found == tokenizer.unk_token_id:
        raise ConversionError(
            f"mask token {mask_token!r} is not in the source tokenizer; pass --mask-token-id N to register it "
            f"at a spare embedding row (stock Qwen3-VL: {DEFAULT_MASK_TOKEN_ID})"
        )
    return found, mask_token


def _check_target(source: Path, target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ConversionError(f"target {target} exists and is not a directory")
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise ConversionError(f"target {target} exists and is not empty (pass --overwrite)")
        if target.resolve() == source.resolve():
            raise ConversionError("target must differ from source")


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace ``target`` by ``staging`` (same parent folder, so both renames stay on one filesystem)."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, retired / target.name)
    os.replace(staging, target)
    shutil.rmtree(retired)


def convert(
    source: str | Path,
    target: str | Path,
    *,
    mask_token_id: int | None = None,
    mask_token: str | None = None,
    block_size: int = 4,
    prompt_attention: str = "block",
    overwrite: bool = False,
) -> Path:
    """Write a Bard-VL initial checkpoint converted from the Qwen3-VL checkpoint ``source``.

    ``mask_token_id`` / ``mask_token`` default to 151671 / ``<|mask|>``; ``mask_token`` alone is
    looked up in the source tokenizer. With ``overwrite``, ``target`` ends up holding exactly
    the new checkpoint.

    Raises:
        ConversionError: not a Qwen3-VL checkpoint, mask id/token collision, bad options,
            or ``target`` exists (without ``overwrite``).
    """
    source, target = Path(source), Path(target)
    if block_size <= 0:
        raise ConversionError(f"block_size must be a positive integer, got {block_size}")
    if prompt_attention not in PROMPT_ATTENTION_CHOICES:
        raise ConversionError(f"prompt_attention must be one of {PROMPT_ATTENTION_CHOICES}, got {prompt_attention!r}")
    if not source.is_dir():
        raise ConversionError(f"source {source} is not a directory")
    config = _read_source_config(source)
    tokenizer = _load_tokenizer(source)
    mask_token_id, mask_token = _resolve_mask_token(mask_token_id, mask_token, tokenizer)
    _check_mask_id(config, mask_token_id, mask_token, tokenizer)
    _check_target(source, target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.converting-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the checkpoint's mode
    try:
        _write_checkpoint(source, staging, config, tokenizer, mask_token_id, mask_token, block_size, prompt_attention)
        _swap_into_place(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def use_bard_processor(model_dir: str | Path) -> list[Path]:
    """Prepare a Bard-VL checkpoint for ``AutoProcessor`` in place (``--processor-only DIR``).

    Released checkpoints name ``Qwen3VLProcessor`` in the processor files they copied from
    Qwen3-VL; this renames it to ``BardVLProcessor`` (processor_files.py), changing no other
    byte. Idempotent: returns the files changed, none on a second run.

    Raises:
        ConversionError: ``model_dir`` is not a Bard-VL checkpoint directory, has no processor
            files, or one of them is malformed or names another processor class.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConversionError(f"{model_dir} is not a directory")
    model_type = _read_config(model_dir).get("model_type")
    if model_type == "qwen3_vl":
        raise ConversionError(
            f"{model_dir} is an autoregressive Qwen3-VL checkpoint (model_type 'qwen3_vl'); "
            f"convert it with: bard convert --from {model_dir} --to OUT"
        )
    if model_type != "bard_vl":
        raise ConversionError(f"{model_dir} is not a Bard-VL checkpoint: model_type is {model_type!r}, expected 'bard_vl'")
    try:
        classes = named_processor_classes(model_dir)
    except ValueError as err:
        raise ConversionError(str(err)) from None
    if not classes:
        raise ConversionError(f"{model_dir} has no processor files (looked for {', '.join(PROCESSOR_FILES)})")
    for name, cls in classes.items():
        if cls not in (None, STOCK_PROCESSOR, BARD_PROCESSOR):
            raise ConversionError(
                f"{model_dir / name} names processor_class {cls!r}; expected {STOCK_PROCESSOR!r} or {BARD_PROCESSOR!r}"
            )
    return rename_stock_processor(model_dir)


def _write_checkpoint(
    source: Path, target: Path, config: dict, tokenizer, mask_token_id: int, mask_token: str,
    block_size: int, prompt_attention: str,
) -> None:
    for item in source.iterdir():  # weights unchanged, processor files as they are
        if item.is_file():
            shutil.copy2(item, target / item.name)
    config.update(
        model_type="bard_vl",
        architectures=["BardVLForConditionalGeneration"],
        mask_token_id=mask_token_id,
        block_size=block_size,
        prompt_attention=prompt_attention,
    )
    config.pop("auto_map", None)
    (target / "config.json").write_text(json.dumps(config, indent=2))
    rename_stock_processor(target)  # AutoProcessor -> BardVLProcessor (processor_files.py)
    if tokenizer is not None:
        _register_mask_token(target, mask_token_id, mask_token, len(tokenizer))
        reloaded = _load_tokenizer(target)
        if (
            reloaded.convert_tokens_to_ids(mask_token) != mask_token_id
            or reloaded.convert_ids_to_tokens(mask_token_id) != mask_token
        ):
            raise ConversionError(f"could not register {mask_token!r} at id {mask_token_id} in the tokenizer")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bard-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from", dest="source", help="autoregressive Qwen3-VL checkpoint directory (required, as is --to, unless --processor-only)"
    )
    parser.add_argument("--to", dest="target", help="output directory for the Bard-VL checkpoint")
    parser.add_argument(
        "--processor-only", metavar="DIR", default=None,
        help=f"instead: prepare a downloaded Bard-VL checkpoint DIR in place for AutoProcessor "
             f"(rename processor_class {STOCK_PROCESSOR} to {BARD_PROCESSOR} in its processor files)",
    )
    parser.add_argument(
        "--mask-token-id", type=int, default=None,
        help=f"embedding row of the mask token (default {DEFAULT_MASK_TOKEN_ID}, or --mask-token's id in the source tokenizer)",
    )
    parser.add_argument(
        "--mask-token", default=None,
        help=f"mask token string (default {DEFAULT_MASK_TOKEN!r}); alone, it must exist in the source tokenizer",
    )
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--prompt-attention", choices=PROMPT_ATTENTION_CHOICES, default="block")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --to folder entirely")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point (``bard-convert`` / ``bard convert``); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.processor_only is not None:
        return _processor_only_main(parser, args)
    if args.source is None or args.target is None:
        parser.error("--from and --to are required (or --processor-only DIR)")
    try:
        out = convert(
            args.source,
            args.target,
            mask_token_id=args.mask_token_id,
            mask_token=args.mask_token,
            block_size=args.block_size,
            prompt_attention=args.prompt_attention,
            overwrite=args.overwrite,
        )
    except ConversionError as err:
        print(f"bard-convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote Bard-VL checkpoint to {out}")
    return 0


def _processor_only_main(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    others = [action.option_strings[0] for action in parser._actions
              if action.dest not in ("help", "processor_only") and getattr(args, action.dest) != action.default]
    if others:
        parser.error(f"--processor-only DIR changes DIR in place and takes no other option (got {', '.join(others)})")
    try:
        renamed = use_bard_processor(args.processor_only)
    except ConversionError as err:
        print(f"bard-convert: error: {err}", file=sys.stderr)
        return 2
    if renamed:
        names = ", ".join(path.name for path in renamed)
        print(f"{args.processor_only}: processor_class {STOCK_PROCESSOR} -> {BARD_PROCESSOR} in {names}")
    else:
        print(f"{args.processor_only}: nothing to change (no processor file names {STOCK_PROCESSOR})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

