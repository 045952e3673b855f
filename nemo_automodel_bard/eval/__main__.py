"""``python -m nemo_automodel_bard.eval [lmms-eval arguments]``: lmms-eval with ``bard_vl`` registered.

For installs where the ``lmms_eval.models`` entry point is not visible (e.g. a source tree on
``PYTHONPATH``); otherwise plain ``lmms-eval --model bard_vl ...`` is the same.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Register ``bard_vl`` with lmms-eval, then hand ``argv`` to lmms-eval's CLI."""
    try:
        from lmms_eval.cli.dispatch import main as lmms_main
    except ImportError as exc:  # the wrapper is optional: say how to get it
        print(f"lmms-eval is not installed ({exc}); run `pip install lmms-eval`", file=sys.stderr)
        return 2
    from nemo_automodel_bard.eval.lmms_model import register

    register()
    sys.argv = ["lmms-eval", *(sys.argv[1:] if argv is None else argv)]
    result = lmms_main()
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
