"""Hugging Face baselines for the benchmarks: ``transformers.Trainer`` finetuning and ``pipeline``.

Run as a child process of ``finetune_speed.py`` / ``predict_speed.py`` so that its peak RSS is
measured on its own. Needs the dev extra (transformers, accelerate).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import pandas as pd
import torch


def _texts_labels(path: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    index = {c: i for i, c in enumerate(classes)}
    return frame["text"].tolist(), [index[x] for x in frame["label"]]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hf_tokenizer(bpe_dir: Path):  # type: ignore[no-untyped-def]
    """GPT-2's tokenizer for transformers, built from the same local files (no hub access)."""
    import shutil
    import tempfile

    from transformers import GPT2TokenizerFast

    # transformers reads a tokenizer folder with the same two files under its own names.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(bpe_dir / "encoder.json", Path(tmp) / "vocab.json")
        shutil.copy(bpe_dir / "vocab.bpe", Path(tmp) / "merges.txt")
        tok = GPT2TokenizerFast.from_pretrained(tmp)
    tok.pad_token = tok.eos_token
    return tok


def training_arguments(args: argparse.Namespace, name: str, lr: float, **extra: object):  # type: ignore[no-untyped-def]
    """The Trainer settings of both baselines: AdamW (weight decay 0.1) at a constant ``lr``, no
    saving or logging, on the CPU unless CUDA is there; ``extra`` adds or overrides."""
    from transformers import TrainingArguments

    settings: dict[str, object] = {
        "output_dir": str(Path(args.workdir) / name),
        "num_train_epochs": args.epochs,
        "per_device_train_batch_size": args.batch_size,
        "learning_rate": lr,
        "weight_decay": 0.1,
        "lr_scheduler_type": "constant",
        "optim": "adamw_torch",
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        "seed": args.seed,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
    }
    return TrainingArguments(**{**settings, **extra})


def train_trainer(args: argparse.Namespace) -> dict[str, object]:
    """(c): GPT2ForSequenceClassification, last block + final norm + head trainable, under Trainer."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, Trainer

    data = Path(args.data)
    classes = json.loads((data / "labels.json").read_text())["classes"]
    t0 = time.perf_counter()
    tok = hf_tokenizer(Path(args.bpe_dir))
    splits = {}
    for split in ("train", "validation", "test"):
        texts, labels = _texts_labels(data / f"{split}.csv", classes)
        enc = tok(texts, truncation=True, max_length=1024)
        splits[split] = [
            {"input_ids": ids, "labels": y} for ids, y in zip(enc["input_ids"], labels, strict=True)
        ]
    t_tok = time.perf_counter() - t0

    def collate(rows: list[dict[str, object]]) -> dict[str, torch.Tensor]:
        # Dynamic padding to the batch's longest text, as DataCollatorWithPadding does.
        width = max(len(r["input_ids"]) for r in rows)  # type: ignore[arg-type]
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            seq = torch.as_tensor(r["input_ids"])
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
        labels = torch.as_tensor([r["labels"] for r in rows])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    torch.manual_seed(args.seed)
    cfg = GPT2Config(
        num_labels=len(classes),
        pad_token_id=tok.pad_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2ForSequenceClassification(cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for module in (model.transformer.h[-1], model.transformer.ln_f, model.score):
        for p in module.parameters():
            p.requires_grad_(True)
    targs = training_arguments(
        args, "hf-trainer", 5e-5, per_device_eval_batch_size=args.batch_size, eval_strategy="epoch",
        remove_unused_columns=False,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=collate,
    )
    t0 = time.perf_counter()
    trainer.train()
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = trainer.predict(splits["test"])
    t_eval = time.perf_counter() - t0
    acc = float((out.predictions.argmax(-1) == out.label_ids).mean())
    return {
        "timings": {"tokenise": t_tok, "cache": 0.0, "train": t_train, "evaluate": t_eval},
        "test_accuracy": acc,
        "peak_rss_mb": _peak_rss_mb(),
    }


def train_lm(args: argparse.Namespace) -> dict[str, object]:
    """``GPT2LMHeadModel`` of the given size trained under ``Trainer`` on the blocks of a .npy file
    ((N, T) token ids, every block whole), all weights, labels = input_ids: training tokens per second."""
    import numpy as np
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer

    blocks = torch.from_numpy(np.load(args.blocks).astype(np.int64))
    rows = [{"input_ids": b, "labels": b} for b in blocks]
    torch.manual_seed(args.seed)
    cfg = GPT2Config(
        n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, n_positions=args.n_positions,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = GPT2LMHeadModel(cfg)
    targs = training_arguments(args, "hf-lm", args.lr, eval_strategy="no")

    def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        ids = torch.stack([r["input_ids"] for r in batch])
        return {"input_ids": ids, "labels": ids}

    trainer = Trainer(model=model, args=targs, train_dataset=rows, data_collator=collate)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    tokens = int(blocks.numel()) * args.epochs
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "peak_rss_mb": _peak_rss_mb(),
    }


def predict_pipeline(args: argparse.Namespace) -> dict[str, object]:
    """Hugging Face ``pipeline("text-classification")`` over a text file, on a saved model folder."""
    from transformers import GPT2ForSequenceClassification, pipeline

    texts = Path(args.texts).read_text(encoding="utf-8").splitlines()
    model = GPT2ForSequenceClassification.from_pretrained(args.model_dir).eval()
    clf = pipeline(
        "text-classification",
        model=model,
        tokenizer=hf_tokenizer(Path(args.bpe_dir)),
        device=-1,
        top_k=None,
        truncation=True,
    )
    t0 = time.perf_counter()
    labels = []
    for scores in clf((t for t in texts), batch_size=args.batch_size):
        labels.append(max(scores, key=lambda s: s["score"])["label"])
    elapsed = time.perf_counter() - t0
    result = {"texts": len(labels), "seconds": elapsed, "peak_rss_mb": _peak_rss_mb()}
    return {**result, "labels": labels} if args.labels else result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    tr = sub.add_parser("train")
    tr.add_argument("--data", required=True)
    tr.add_argument("--bpe-dir", required=True)
    tr.add_argument("--workdir", required=True)
    tr.add_argument("--epochs", type=int, default=5)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--seed", type=int, default=123)
    pr = sub.add_parser("predict")
    pr.add_argument("--model-dir", required=True)
    pr.add_argument("--texts", required=True)
    pr.add_argument("--bpe-dir", required=True)
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--labels", action="store_true", help="also write each text's predicted label")
    lm = sub.add_parser("lm")
    lm.add_argument("--blocks", required=True, help=".npy of (N, T) token ids")
    lm.add_argument("--workdir", required=True)
    for name, default in (("n-layer", 12), ("n-head", 12), ("n-embd", 768), ("n-positions", 1024)):
        lm.add_argument(f"--{name}", type=int, default=default)
    lm.add_argument("--epochs", type=int, default=1)
    lm.add_argument("--batch-size", type=int, default=8)
    lm.add_argument("--lr", type=float, default=5e-5)
    lm.add_argument("--seed", type=int, default=123)
    for p in (tr, pr, lm):
        p.add_argument("--result", required=True, help="write the JSON result here (stdout has HF's logs)")
    args = parser.parse_args(argv)
    result = {"train": train_trainer, "predict": predict_pipeline, "lm": train_lm}[args.what](args)
    Path(args.result).write_text(json.dumps(result) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
