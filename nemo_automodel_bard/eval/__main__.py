"""``python -m nemo_automodel_bard.eval [lmms-eval arguments]``: lmms-eval with ``bard_vl``, failing loudly.

Two things plain ``lmms-eval`` does not do:

* it registers ``bard_vl`` in-process, for installs where the ``lmms_eval.models`` entry point
  is not visible (e.g. a source tree on ``PYTHONPATH``);
* it exits non-zero when the evaluation failed. lmms-eval 0.7.3 catches any exception raised
  while evaluating (bad ``model_args``, a task that is not found, a dataset that does not
  load, a crash in the model), logs ``Error during evaluation: ...`` and exits 0. Here every
  evaluation lmms-eval runs is watched: one that raised, or that returned no results on the
  main process, makes the exit status 1.
"""

from __future__ import annotations

import sys
from typing import Any

EXIT_EVAL_FAILED = 1
EXIT_NO_LMMS_EVAL = 2


class _Outcomes:
    """Wraps lmms-eval's ``cli_evaluate_single`` to record how each evaluation ended."""

    def __init__(self, evaluate_single: Any) -> None:
        self.evaluate_single = evaluate_single
        self.failures: list[str] = []
        self.runs = 0

    def __call__(self, args: Any) -> Any:
        self.runs += 1
        try:
            results, samples = self.evaluate_single(args)
        except Exception as exc:  # lmms-eval logs and swallows it; remember it for the exit status
            self.failures.append(f"{type(exc).__name__}: {exc}")
            raise
        if results is None and _is_main_process():
            self.failures.append("lmms-eval returned no results")
        return results, samples


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def main(argv: list[str] | None = None) -> int:
    """Register ``bard_vl``, run lmms-eval's CLI on ``argv``; 1 if any evaluation failed."""
    try:
        import lmms_eval.__main__ as lmms_main_module
        from lmms_eval.cli.dispatch import main as lmms_main
    except ImportError as exc:  # the wrapper is optional: say how to get it
        print(f"lmms-eval is not installed ({exc}); run `pip install 'nemo-automodel-bard[eval]'`", file=sys.stderr)
        return EXIT_NO_LMMS_EVAL
    from nemo_automodel_bard.eval.lmms_model import register

    register()
    outcomes = _Outcomes(lmms_main_module.cli_evaluate_single)
    lmms_main_module.cli_evaluate_single = outcomes
    sys.argv = ["lmms-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        lmms_main()
    finally:
        lmms_main_module.cli_evaluate_single = outcomes.evaluate_single
    if outcomes.failures:
        print(f"[bard_vl] evaluation failed: {'; '.join(outcomes.failures)}", file=sys.stderr)
        return EXIT_EVAL_FAILED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
