"""Prediction speed and memory: ``gptclf predict`` vs Hugging Face ``pipeline("text-classification")``.

Both classify the same texts (drawn from the SMS Spam Collection in ../shared) with the same
weights: a gptclf run directory (random GPT-2 weights, 2 classes; speed does not depend on what the
weights learnt) and the same model converted to ``GPT2ForSequenceClassification``. Each side runs in
its own process, so its peak RSS is its own. gptclf also runs on ``--scale`` times as many texts to
show that its memory stays flat on a longer stream.

    python benchmarks/predict_speed.py                 # 10,000 texts, gpt2-small, scale 10
    python benchmarks/predict_speed.py --quick         # 1,000 texts, flat check at 10,000
    python benchmarks/predict_speed.py --model n_layer=2,n_head=4,n_embd=128 --texts 100000

Needs the dev extra (transformers, accelerate) and ../shared/data.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BPE_DIR,
    SMS_FILE,
    make_home,
    print_table,
    require_shared,
    run_child,
)

from gptclf.classifier import Classifier, TrainableScope, replace_head
from gptclf.config import resolve_model
from gptclf.model import build_model
from gptclf.rundir import build_run_info, save_run
from gptclf.weights import CONV1D_SUFFIXES

CLASSES = ["ham", "spam"]


def make_run(run_dir: Path, model_spec: str, seed: int) -> Classifier:
    """A run directory with random weights and a 2-class head."""
    name, cfg = resolve_model(model_spec)
    gpt = build_model(cfg, seed=seed)
    replace_head(gpt, len(CLASSES), seed=seed)
    model = Classifier(gpt, CLASSES, "last-token").eval()
    info = build_run_info(
        model_name=name,
        config=cfg,
        classes=CLASSES,
        max_length=cfg.n_positions,
        pooling="last-token",
        trainable=TrainableScope().to_dict(),
        trainable_params=0,
        train={},
        seed=seed,
        weights="random",
    )
    save_run(run_dir, model, info, BPE_DIR)
    return model


def export_hf(model: Classifier, out_dir: Path) -> None:
    """The same classifier as ``GPT2ForSequenceClassification`` (same logits on the last token).

    HF's ``score`` layer has no bias; the head's bias b is folded into ``ln_f``'s bias instead:
    W (g * x + beta') = W (g * x + beta) + b with beta' = beta + pinv(W) b, exact because W has
    full row rank (K classes < C dims).
    """
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = model.gpt.config
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        num_labels=len(CLASSES),
        pad_token_id=50256,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    state = {}
    for k, v in model.gpt.state_dict().items():
        if k.startswith("lm_head"):
            continue
        state[k] = v.t().contiguous() if k.endswith(CONV1D_SUFFIXES) else v
    w, b = model.gpt.lm_head.weight.detach(), model.gpt.lm_head.bias.detach()
    state["transformer.ln_f.bias"] = state["transformer.ln_f.bias"] + torch.linalg.pinv(w) @ b
    state["score.weight"] = w
    hf = GPT2ForSequenceClassification(hf_cfg)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("attn.bias") for k in missing), (missing, unexpected)
    hf.eval()
    ids = torch.randint(0, 50000, (3, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # same weights, same answers: the comparison is fair
        ours = model(ids, torch.full((3,), 12))
        torch.testing.assert_close(hf(ids).logits, ours, atol=1e-4, rtol=1e-4)
    hf.save_pretrained(out_dir, safe_serialization=True)


def write_texts(path: Path, n: int, seed: int) -> None:
    """``n`` texts drawn (with replacement) from the SMS file, one a line."""
    texts = [line.split("\t", 1)[1] for line in SMS_FILE.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    path.write_text("\n".join(rng.choice(texts) for _ in range(n)) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=10_000, help="texts for the comparison (default 10,000)")
    parser.add_argument(
        "--scale", type=int, default=10, help="gptclf alone on this many times more texts (1: skip)"
    )
    parser.add_argument("--model", default="gpt2-small", help="preset or custom size (default gpt2-small)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32", help="gptclf's --precision (fp32 or bf16)")
    parser.add_argument("--quick", action="store_true", help="1,000 texts; finishes in a few minutes")
    parser.add_argument("--skip-hf", action="store_true", help="measure gptclf only")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    require_shared()
    n = 1_000 if args.quick else args.texts

    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        model = make_run(work / "run", args.model, args.seed)
        rows = []
        results = {}
        runs = [("gptclf", n)] + ([(f"gptclf x{args.scale}", n * args.scale)] if args.scale > 1 else [])
        for label, count in runs:
            texts = work / f"texts-{count}.txt"
            write_texts(texts, count, args.seed)
            cmd = [
                sys.executable,
                "-m",
                "cli.main",
                "predict",
                str(work / "run"),
                "--input",
                str(texts),
                "--format",
                "jsonl",
                "--batch-size",
                str(args.batch_size),
                "--precision",
                args.precision,
            ]
            res = run_child(cmd, env={"GPTCLF_HOME": str(home)}, stdout_path=work / "out.jsonl")
            lines = (work / "out.jsonl").read_text(encoding="utf-8").count("\n")
            assert lines == count, f"gptclf predict wrote {lines} lines for {count} texts"
            results[label] = (count, res.seconds, res.peak_rss_mb)
        if not args.skip_hf:
            export_hf(model, work / "hf")
            texts = work / f"texts-{n}.txt"
            cmd = [
                sys.executable,
                str(Path(__file__).with_name("hf_baseline.py")),
                "predict",
                "--model-dir",
                str(work / "hf"),
                "--texts",
                str(texts),
                "--bpe-dir",
                str(BPE_DIR),
                "--batch-size",
                str(args.batch_size),
                "--result",
                str(work / "hf.json"),
            ]
            res = run_child(cmd)
            hf = json.loads((work / "hf.json").read_text())
            results["HF pipeline"] = (n, res.seconds, res.peak_rss_mb)
            results["HF pipeline (loop only)"] = (n, hf["seconds"], hf["peak_rss_mb"])

    for label, (count, seconds, rss) in results.items():
        rows.append([label, f"{count:,}", f"{seconds:.1f}", f"{count / seconds:.1f}", f"{rss:.0f}"])
    print(
        f"model {args.model}, batch {args.batch_size}, gptclf precision {args.precision}, "
        f"{torch.get_num_threads()} threads; wall time includes start-up and model loading"
    )
    print_table(["what", "texts", "seconds", "texts/s", "peak RSS MB"], rows)
    base = results["gptclf"]
    if args.scale > 1:
        big = results[f"gptclf x{args.scale}"]
        print(f"\nRSS for {big[0]:,} texts / RSS for {base[0]:,}: {big[2] / base[2]:.3f}")
    if "HF pipeline" in results:
        ratio = (base[0] / base[1]) / (results["HF pipeline"][0] / results["HF pipeline"][1])
        print(f"gptclf texts/s / HF pipeline texts/s (wall): {ratio:.2f}x")


if __name__ == "__main__":
    main()
