"""gptclf's command line: one thin Typer command per verb over the :mod:`gptclf` library."""
