"""A language model as a Hugging Face ``GPT2LMHeadModel`` folder: what ``gptclf adapt`` writes.

``transformers.GPT2LMHeadModel.from_pretrained(folder)`` loads it with the same logits, and
``gptclf finetune --model folder`` takes it as its base model (:func:`gptclf.model.hfconfig.local_model`):

- ``config.json``: GPT-2's sizes (:func:`gptclf.model.hfconfig.hf_config_from_gpt`), the
  architecture, ``<|endoftext|>`` as bos/eos, and a ``gptclf`` object recording the adaptation;
- ``model.safetensors``: the weights in Hugging Face's layout (:func:`gptclf.model.weights.hf_layout`),
  fp32; the output layer is tied to ``transformer.wte`` and not stored, as transformers saves it;
- the tokenizer (:mod:`gptclf.interop.hf_tokenizer`) and a short model card ``README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptclf.fileio import atomic_write_json, atomic_write_text
from gptclf.interop.hf_tokenizer import write_hf_tokenizer
from gptclf.model.gpt import GPT
from gptclf.model.hfconfig import hf_config_from_gpt
from gptclf.model.tokenizer import EOT_ID
from gptclf.model.weights import hf_layout
from gptclf.rundir import save_weights

ARCHITECTURE = "GPT2LMHeadModel"


def write_lm_folder(folder: Path, gpt: GPT, tokenizer_dir: Path, record: dict[str, Any], title: str) -> None:
    """Write ``gpt`` (LoRA merged already) into ``folder`` as a ``GPT2LMHeadModel`` folder.

    Args:
        folder: An empty work folder (the caller swaps it in).
        gpt: The model, its output layer tied to ``wte``.
        tokenizer_dir: The folder of ``encoder.json`` and ``vocab.bpe``.
        record: config.json's ``gptclf`` object (how it was adapted, the data, the perplexities),
            which the model card is written from.
        title: The card's title (the name the folder will have).
    """
    folder = Path(folder)
    state = {k: v for k, v in gpt.state_dict().items() if k != "lm_head.weight"}  # tied: wte is it
    save_weights(folder / "model.safetensors", hf_layout(state), {"format": "pt"})  # transformers wants "pt"
    config = {
        "architectures": [ARCHITECTURE],
        **hf_config_from_gpt(gpt.config),
        "bos_token_id": EOT_ID,
        "eos_token_id": EOT_ID,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "gptclf": record,
    }
    atomic_write_json(folder / "config.json", config)
    write_hf_tokenizer(tokenizer_dir, folder, gpt.config.n_positions)
    atomic_write_text(folder / "README.md", lm_card(title, record))


def _ppl(figures: dict[str, Any] | None) -> str:
    return "n/a" if not figures else f"{figures['perplexity']:,.2f}"


def lm_card(name: str, record: dict[str, Any]) -> str:
    """The folder's README.md from config.json's ``gptclf`` object: what it is, its data, its
    validation perplexity before and after."""
    data = record["data"]
    train = record["train"]
    return "\n".join(
        [
            "---",
            "library_name: transformers",
            "pipeline_tag: text-generation",
            "tags: [gpt2, gptclf, domain-adaptive-pretraining]",
            "---",
            "",
            f"# {name}",
            "",
            f"GPT-2 ({record['base_model']}, {record['weights']} weights) further pretrained on the texts "
            f"below with `gptclf adapt`: next-token cross-entropy through the tied output layer, blocks of "
            f"{record['block_size']} tokens, trainable scope {record['trainable']}, "
            f"{train['epochs']} epochs, "
            f"lr {train['lr']:g}, seed {record['seed']}, {record['steps']} steps.",
            "Load it with `transformers.GPT2LMHeadModel.from_pretrained`, or finetune a classifier on it "
            "with `gptclf finetune --model <this folder>`.",
            "",
            "## Data",
            "",
            "| source | texts | tokens |",
            "|---|---|---|",
            *(f"| {s['source']} | {s['texts']:,} | {s['tokens']:,} |" for s in data["sources"]),
            "",
            f"{data['train']:,} training blocks ({data['train_tokens']:,} tokens); {data['validation']:,} "
            f"validation blocks ({data['validation_tokens']:,} tokens) from {data['validation_texts']:,} "
            "held-out texts.",
            "",
            "## Validation perplexity",
            "",
            f"- before: {_ppl(record['validation_before'])}",
            f"- after (the kept weights, step {record['best_step']}): {_ppl(record['validation_after'])}",
            "",
            "Perplexity is exp(mean next-token cross-entropy) over the held-out blocks, the positions "
            "`GPT2LMHeadModel(input_ids, labels=input_ids)` scores in each block.",
            "",
            "```json",
            json.dumps({"train": train, "precision": record["precision"]}, indent=2),
            "```",
            "",
        ]
    )
