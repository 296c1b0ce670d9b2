"""``cifar100-func <command> [options]`` (or ``python -m cifar100_func <command>``)."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "study": "the whole study in order, then report/REPORT.md (cached stages)",
    "sanity": "sanity checks: splits, class balance, initial loss, baselines, FLOPs, augmented samples",
    "overfit": "learn a tiny training subset by heart (fails loudly when something is broken)",
    "lr_finder": "learning-rate range test, several seeds stacked under torch.func.vmap",
    "train": "final training run on the standard path (one model)",
    "evaluate": "test-set metrics and confusion matrices of a checkpoint",
    "grid_search": "the hyper-parameter grid, stacked models under torch.func.vmap",
}


def main(argv: list[str] | None = None) -> int:
    from .commands.cli import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = "\n".join(f"  {name:<{width}}  {text}" for name, text in COMMANDS.items())
        print(f"usage: cifar100-func <command> [--config PATH] [--set KEY=VALUE ...]\n\ncommands:\n{lines}",
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(f"cifar100_func.commands.{argv[0]}")
    return run_command(module.main, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
