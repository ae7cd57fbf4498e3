"""The model: GPT-2 in one readable file, its presets and Hugging Face configs, checkpoints, the
tokenizer, and the classifier (head replacement, trainable scopes, LoRA, pooling, the one forward)."""
