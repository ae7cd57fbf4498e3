"""Stage 3, train: the finetune verb and its settings, plan and context, the flat training loop, the
optimizer step, checkpoints and resume, and data-parallel training under torchrun."""
