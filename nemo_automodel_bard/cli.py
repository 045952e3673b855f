"""``bard`` console script: one entry point, subcommands implemented next to their code.

AutoModel 0.7.0 has no subcommand plugin mechanism (automodel_notes.md section 4), so
``bard finetune --recipe bard_pbm`` lives here and hands over to AutoModel's own launcher.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, function taking argv, one-line help)
_COMMANDS = {
    "finetune": ("nemo_automodel_bard.recipes.launch", "main", "train: --recipe bard_pbm|bard_swd or a YAML"),
    "generate": ("nemo_automodel_bard.generation.cli", "main", "decode an image + prompt with a Bard-VL checkpoint"),
    "convert": ("nemo_automodel_bard.models.bard_vl.convert", "main", "AR Qwen3-VL checkpoint -> Bard-VL initial checkpoint"),
    "demo": ("nemo_automodel_bard.toy.pipeline", "main", "toy task end to end: AR -> PBM -> SWD -> evaluation"),
    "eval": ("nemo_automodel_bard.toy.evaluate", "main", "evaluate checkpoints on the toy test split"),
}


def _usage() -> str:
    lines = ["usage: bard <command> [args...]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, _, help_) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"bard: unknown command {name!r}; choose one of: {', '.join(_COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _ = _COMMANDS[name]
    result = getattr(importlib.import_module(module), func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
