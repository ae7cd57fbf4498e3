"""Does continued pretraining (``gptclf adapt``) help the classifier, and how fast does it train?

On the real SMS data with ``--weights random`` (no pretrained weights can be had here), a GPT of
gpt2-small's depth at width 384 (``n_layer=12,n_head=6,n_embd=384``), the book's split (747/747,
1,045/149/300, seed 123) and the default finetune (last block + final norm, 5 epochs, lr 5e-5):

  (a) finetune alone, from the random weights;
  (b) ``gptclf adapt --data`` on every SMS text outside the test split (train, validation and the
      ham texts the balancing set aside: 3,966 once those equal to a split's text are left out;
      5,160 texts, about 115,000 tokens, in training blocks of 128 tokens), then the same
      finetune on the adapted folder.

Blocks of 128, not the context's 1,024: SMS texts are about 30 tokens, and 1,024-token blocks leave
105 blocks, 13 optimizer steps an epoch. Early in language modelling from random weights the model
predicts the same token frequencies after every context and its last-token states collapse onto one
direction (on a 2-layer model: average distance of 300 texts' states to their mean 0.63 against a
mean norm of 8.1; 7.8 against 1.6 for the random weights), and a finetune on them is at chance.
Blocks of 128 give 8x the steps for the same tokens, and 10 epochs at lr 1e-3 with a cosine decay
after 5% of warmup train the language model long enough to get past that (``--block-size``,
``--lr``, ``--adapt-epochs``, ``--schedule`` and ``--warmup`` set the recipe; the README has what
each gave).

It prints the test accuracy of (a) and (b), adapt's validation perplexity before and after, and
adapt's training tokens/s against ``transformers.Trainer`` training ``GPT2LMHeadModel`` of the same
size on the same blocks (``benchmarks/hf_baseline.py lm``, all weights, same batch and lr).

    flock /tmp/gptclf-bench.lock python benchmarks/adapt.py          # about 40 minutes on 2 cores
    python benchmarks/adapt.py --quick                               # a 500-row subset, a tiny GPT

Needs ../shared/data. Each step runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BPE_DIR, SMS_FILE, make_home, print_table, require_shared, run_child, run_finetune
from finetune_speed import prepare_data

FULL = {
    "model": "n_layer=12,n_head=6,n_embd=384",
    "block": 128,
    "adapt_epochs": 10,
    "lr": 1e-3,
    "schedule": "cosine",
    "warmup": 0.05,
    "finetune": [],
}
QUICK = {
    "model": "n_layer=2,n_head=2,n_embd=64,n_positions=128",
    "block": 128,
    "adapt_epochs": 1,
    "lr": 1e-3,
    "schedule": "constant",
    "warmup": 0.0,
    "finetune": ["--epochs", "1"],
}


def run_adapt(data: Path, source: Path, home: Path, out: Path, seed: int, cfg: dict) -> dict:
    """``gptclf adapt --data --json`` in its own process: its summary."""
    cmd = [
        sys.executable, "-m", "cli.main", "adapt", "--data", str(data), "--source", str(source),
        "--model", cfg["model"], "--weights", "random", "--device", "cpu", "--seed", str(seed),
        "--block-size", str(cfg["block"]), "--epochs", str(cfg["adapt_epochs"]), "--lr", str(cfg["lr"]),
        "--schedule", cfg["schedule"], "--warmup", str(cfg["warmup"]), "--out", str(out), "--json",
    ]  # fmt: skip
    return json.loads(run_child(cmd, env={"GPTCLF_HOME": str(home)}).stdout)


def trainer_rate(data: Path, source: Path, work: Path, seed: int, cfg: dict, blocks: int) -> dict:
    """transformers' Trainer on the blocks adapt trained on (rebuilt by the same code and seed)."""
    from gptclf.data.corpus import prepared_texts
    from gptclf.model.config import resolve_model
    from gptclf.model.tokenizer import load_tokenizer
    from gptclf.training.adapt_data import build_corpus

    found = prepared_texts(data, source, None)
    corpus = build_corpus(found.sources, load_tokenizer(BPE_DIR), cfg["block"], validation=0.1, seed=seed)
    assert len(corpus.train) == blocks, "the blocks differ from adapt's"
    path = work / "blocks.npy"
    np.save(path, corpus.train.ids)
    shape = resolve_model(cfg["model"])[1]
    result = work / "hf-lm.json"
    cmd = [
        sys.executable, str(Path(__file__).with_name("hf_baseline.py")), "lm", "--blocks", str(path),
        "--workdir", str(work), "--n-layer", str(shape.n_layer), "--n-head", str(shape.n_head),
        "--n-embd", str(shape.n_embd), "--n-positions", str(shape.n_positions), "--epochs", "1",
        "--lr", str(cfg["lr"]), "--seed", str(seed), "--result", str(result),
    ]  # fmt: skip
    run_child(cmd)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a 500-row subset and a tiny GPT: proves the script"
    )
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--adapt-epochs", type=int, help="adapt's epochs (default 10; 1 with --quick)")
    parser.add_argument(
        "--schedule", choices=("constant", "cosine"), help="adapt's schedule (default cosine)"
    )
    parser.add_argument("--warmup", type=float, help="adapt's warmup steps or share (default 0.05)")
    parser.add_argument("--block-size", type=int, help="adapt's block size (default 128)")
    parser.add_argument("--lr", type=float, help="adapt's learning rate (default 1e-3)")
    args = parser.parse_args()
    require_shared()
    cfg = dict(QUICK if args.quick else FULL)
    if args.block_size is not None:
        cfg["block"] = args.block_size
    if args.lr is not None:
        cfg["lr"] = args.lr
    if args.adapt_epochs:
        cfg["adapt_epochs"] = args.adapt_epochs
    if args.schedule is not None:
        cfg["schedule"] = args.schedule
    if args.warmup is not None:
        cfg["warmup"] = args.warmup
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        data = prepare_data(work, home, quick=args.quick, seed=args.seed)
        source = work / "SMSSpamCollection" if args.quick else SMS_FILE
        flags = ["--model", cfg["model"], *cfg["finetune"]]
        print("(a) finetune alone ...", file=sys.stderr, flush=True)
        alone, _ = run_finetune(data, "ham,spam", home, work / "run-a", args.seed, flags)
        print("adapt ...", file=sys.stderr, flush=True)
        lm = work / "lm"
        adapted = run_adapt(data, source, home, lm, args.seed, cfg)
        print("(b) finetune on the adapted folder ...", file=sys.stderr, flush=True)
        on_lm = ["--model", str(lm), "--weights", "pretrained", *cfg["finetune"]]  # the folder's weights
        after, _ = run_finetune(data, "ham,spam", home, work / "run-b", args.seed, on_lm)
        print("transformers Trainer on the same blocks ...", file=sys.stderr, flush=True)
        hf = trainer_rate(data, source, work, args.seed, cfg, adapted["blocks"]["train"])
    b = adapted["blocks"]
    texts = ", ".join(f"{s['texts']:,} {s['source'].split(' of ')[0]}" for s in adapted["sources"])
    print(
        f"SMS book split, random weights, {cfg['model']}, seed {args.seed}, {torch.get_num_threads()} threads"
    )
    print(
        f"adapt: {texts}; {b['train']:,} blocks of {b['block_size']} ({b['train_tokens']:,} tokens), "
        f"{cfg['adapt_epochs']} epochs, lr {cfg['lr']:g} ({cfg['schedule']}, warmup {cfg['warmup']:g}), "
        "all weights"
    )
    print_table(
        ["", "test accuracy", "best val acc"],
        [
            [
                "(a) finetune alone",
                f"{100 * alone['test_accuracy']:.2f}%",
                f"{100 * alone['best_val_acc']:.2f}%",
            ],
            [
                "(b) adapt, then finetune",
                f"{100 * after['test_accuracy']:.2f}%",
                f"{100 * after['best_val_acc']:.2f}%",
            ],
        ],
    )
    print()
    print_table(
        ["adapt validation perplexity", "before", "after"],
        [
            [
                "held-out SMS texts",
                f"{adapted['perplexity_before']:,.1f}",
                f"{adapted['perplexity_after']:,.1f}",
            ]
        ],
    )
    print()
    print_table(
        ["training on the same blocks", "tokens/s", "seconds"],
        [
            ["gptclf adapt", f"{adapted['tokens_per_second']:,.0f}", f"{adapted['train_seconds']:.1f}"],
            ["transformers Trainer (1 epoch)", f"{hf['tokens_per_second']:,.0f}", f"{hf['seconds']:.1f}"],
        ],
    )


if __name__ == "__main__":
    main()
