"""``python -m gptclf``: the command line, as the ``gptclf`` script runs it, for launchers that start
a module (``torchrun --nproc-per-node 2 -m gptclf predict ...``). The one place the library reaches
up to ``cli``: only when it is run as a program, never when it is imported."""

from __future__ import annotations

if __name__ == "__main__":
    from cli.main import main

    main()
