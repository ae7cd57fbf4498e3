"""Prediction engines side by side: speed, memory, file size, agreement and accuracy on SMS texts.

One gpt2-small classifier, finetuned here with ``gptclf finetune --weights random`` on the book's SMS
split (last block trained, 5 epochs; no pretrained weights can be had on these machines), or the
run given with ``--run``. Each row classifies the same texts (drawn with replacement from the SMS
Spam Collection in ../shared) in its own process, so its wall time and peak RSS are its own:

    gptclf fp32         gptclf predict RUN --precision fp32
    gptclf bf16         gptclf predict RUN --precision bf16           (where the CPU has bf16)
    torch int8          gptclf predict RUN --quantize int8            (dynamic quantization, torch)
    ONNX Runtime fp32   gptclf predict DIR                            (DIR: the fp32 ONNX export)
    ONNX Runtime int8   gptclf predict DIR8                           (export with --quantize int8)
    HF pipeline         pipeline("text-classification") on the same weights as GPT2ForSequenceClassification

Columns: texts/s (wall time of the whole command, start-up and model loading included), peak RSS,
the size of the model file the row loads (torch int8 quantizes at load time: its size is that of
its quantized state_dict), label agreement with gptclf fp32 on the same texts, and accuracy on the
run's test split (a second, short command per row).

    python benchmarks/predict_speed.py                       # the table: 10,000 texts, gpt2-small
    python benchmarks/predict_speed.py --texts 200           # a smoke run of every row
    python benchmarks/predict_speed.py --quick               # 1,000 texts, a 500-row split, 1 epoch
    python benchmarks/predict_speed.py --quick --texts 200   # the smallest smoke run of gpt2-small
    python benchmarks/predict_speed.py --run runs/sms --rows fp32,onnx-int8
    python benchmarks/predict_speed.py --model n_layer=2,n_head=4,n_embd=128 --texts 10000 \\
        --scale 10 --rows fp32                               # flat memory on a 10x longer stream

Needs the dev and onnx extras (transformers, accelerate; onnx, onnxruntime, onnxscript) and
../shared/data.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this clone's gptclf, not an installed one
from common import BPE_DIR, SMS_FILE, make_home, print_table, require_shared, run_child, run_finetune
from finetune_speed import prepare_data

from gptclf.model.classifier import Classifier
from gptclf.model.weights import CONV1D_SUFFIXES
from gptclf.rundir import WEIGHTS_FILE, load_run

#: Row key -> (label, extra predict options; None: the HF pipeline).
ROWS: dict[str, tuple[str, list[str] | None]] = {
    "fp32": ("gptclf fp32", ["--precision", "fp32"]),
    "bf16": ("gptclf bf16", ["--precision", "bf16"]),
    "int8": ("torch int8", ["--quantize", "int8"]),
    "onnx": ("ONNX Runtime fp32", []),
    "onnx-int8": ("ONNX Runtime int8", []),
    "pipeline": ("HF pipeline", None),
}


def export_hf(model: Classifier, out_dir: Path) -> None:
    """The same classifier as ``GPT2ForSequenceClassification`` (same logits on the last token).

    HF's ``score`` layer has no bias; the head's bias b is folded into ``ln_f``'s bias instead:
    W (g * x + beta') = W (g * x + beta) + b with beta' = beta + pinv(W) b, exact because W has
    full row rank (K classes < C dims).
    """
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg, classes = model.gpt.config, model.classes
    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        num_labels=len(classes),
        pad_token_id=50256,
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
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


@dataclass
class Models:
    """What the rows load: the run, its ONNX exports, its HF copy, and each one's size in MB."""

    run: Path
    paths: dict[str, Path]
    sizes_mb: dict[str, float]


def build_models(run: Path, work: Path, keys: list[str]) -> Models:
    """Export the run for the rows that need it, in a child process of its own.

    Not in this process: Linux passes a parent's peak RSS at fork on to the child's (exec keeps
    it), so every row measured after a model was loaded here would report at least that much.
    """
    cmd = [sys.executable, __file__, "--build", str(run), str(work), ",".join(keys)]
    run_child(cmd)
    record = json.loads((work / "models.json").read_text())
    return Models(run, {k: Path(v) for k, v in record["paths"].items()}, record["sizes_mb"])


def _build(run: Path, work: Path, keys: list[str]) -> None:
    """The child of :func:`build_models`: exports, sizes, and models.json in ``work``."""
    from gptclf.engines.load import quantize_torch_int8
    from gptclf.engines.onnx_build import export_onnx
    from gptclf.engines.onnx_folder import ONNX_FILE

    loaded = load_run(run)
    weights_mb = (run / WEIGHTS_FILE).stat().st_size / 1e6
    paths = {k: run for k in ("fp32", "bf16", "int8")}
    sizes = {"fp32": weights_mb, "bf16": weights_mb}
    if "int8" in keys:
        buffer = io.BytesIO()
        torch.save(quantize_torch_int8(loaded.model).state_dict(), buffer)
        sizes["int8"] = buffer.tell() / 1e6
    for key, quantize in (("onnx", None), ("onnx-int8", "int8")):
        if key in keys:
            paths[key] = work / key
            paths[key].mkdir()
            export_onnx(loaded, paths[key], quantize=quantize)
            sizes[key] = sum(p.stat().st_size for p in paths[key].glob(ONNX_FILE + "*")) / 1e6
    if "pipeline" in keys:
        paths["pipeline"] = work / "hf"
        export_hf(loaded.model, paths["pipeline"])
        sizes["pipeline"] = (paths["pipeline"] / "model.safetensors").stat().st_size / 1e6
    record = {"paths": {k: str(v) for k, v in paths.items()}, "sizes_mb": sizes}
    (work / "models.json").write_text(json.dumps(record), encoding="utf-8")


def predict_labels(
    key: str, models: Models, texts: Path, work: Path, home: Path, batch_size: int
) -> tuple[list[str], float, float]:
    """One row on ``texts`` in a child process: (labels, wall seconds, peak RSS MB)."""
    options = ROWS[key][1]
    if options is None:
        result = work / "hf.json"
        cmd = [
            sys.executable, str(Path(__file__).with_name("hf_baseline.py")), "predict",
            "--model-dir", str(models.paths[key]), "--texts", str(texts), "--bpe-dir", str(BPE_DIR),
            "--batch-size", str(batch_size), "--result", str(result), "--labels",
        ]  # fmt: skip
        child = run_child(cmd)
        return json.loads(result.read_text())["labels"], child.seconds, child.peak_rss_mb
    out = work / "out.jsonl"
    cmd = [
        sys.executable, "-m", "cli.main", "predict", str(models.paths[key]), "--input", str(texts),
        "--format", "jsonl", "--batch-size", str(batch_size), *options,
    ]  # fmt: skip
    child = run_child(cmd, env={"GPTCLF_HOME": str(home)}, stdout_path=out)
    labels = [json.loads(line)["label"] for line in out.read_text(encoding="utf-8").splitlines()]
    return labels, child.seconds, child.peak_rss_mb


def test_split(run: Path, work: Path) -> tuple[Path, list[str]]:
    """The run's test texts, one a line (newlines inside a text become spaces), and their labels."""
    info = json.loads((run / "run.json").read_text())
    data = Path(info["data"]["dir"]) if "dir" in (info.get("data") or {}) else None
    if data is None or not (data / "test.csv").is_file():
        raise SystemExit(f"the run's prepared data (test.csv) is not where run.json says: {data}")
    frame = pd.read_csv(data / "test.csv", keep_default_na=False, dtype=str)
    path = work / "test.txt"
    path.write_text("".join(" ".join(t.splitlines()) + "\n" for t in frame["text"]), encoding="utf-8")
    return path, frame["label"].tolist()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, help="texts per row (default 10,000; 1,000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="1,000 texts, a 500-row split, 1 epoch")
    parser.add_argument("--run", type=Path, help="an existing run directory (default: finetune one)")
    parser.add_argument("--model", default="gpt2-small", help="preset or custom size to finetune")
    parser.add_argument("--epochs", type=int, default=5, help="finetuning epochs (default 5)")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {', '.join(ROWS)}")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--scale", type=int, default=1, help="also gptclf fp32 on this many times the texts")
    parser.add_argument("--skip-hf", action="store_true", help="leave out the HF pipeline row")
    parser.add_argument("--seed", type=int, default=123)
    args = parser.parse_args()
    args.keys = [k for k in args.rows.split(",") if k and not (args.skip_hf and k == "pipeline")]
    if unknown := set(args.keys) - set(ROWS):
        parser.error(f"unknown rows {sorted(unknown)}: use {', '.join(ROWS)}")
    if "bf16" in args.keys and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        print("this CPU has no bf16: the bf16 row is left out", file=sys.stderr)
        args.keys.remove("bf16")
    if args.quick:
        args.epochs = 1
    args.texts = args.texts or (1_000 if args.quick else 10_000)
    return args


def main() -> None:
    args = parse_args()
    require_shared()
    with tempfile.TemporaryDirectory(prefix="gptclf-bench-") as tmp:
        work = Path(tmp)
        home = make_home(work)
        run = args.run
        if run is None:
            data = prepare_data(work, home, quick=args.quick, seed=args.seed)
            flags = ["--model", args.model, "--epochs", str(args.epochs)]
            run_finetune(data, "ham,spam", home, work / "run", args.seed, flags)
            run = work / "run"
        models = build_models(run, work, args.keys)
        texts = work / "texts.txt"
        write_texts(texts, args.texts, args.seed)
        test_texts, test_labels = test_split(run, work)
        results: dict[str, tuple[list[str], float, float, float]] = {}
        for key in args.keys:
            labels, seconds, rss = predict_labels(key, models, texts, work, home, args.batch_size)
            assert len(labels) == args.texts, f"{key} gave {len(labels)} labels for {args.texts} texts"
            got = predict_labels(key, models, test_texts, work, home, args.batch_size)[0]
            accuracy = sum(a == b for a, b in zip(got, test_labels, strict=True)) / len(test_labels)
            results[key] = (labels, seconds, rss, accuracy)
            print(f"{ROWS[key][0]}: {args.texts / seconds:.1f} texts/s", file=sys.stderr, flush=True)
        flat = None
        if args.scale > 1:
            write_texts(texts, args.texts * args.scale, args.seed)
            flat = predict_labels("fp32", models, texts, work, home, args.batch_size)[2]
    report(args, models, results, flat)


def report(
    args: argparse.Namespace,
    models: Models,
    results: dict[str, tuple[list[str], float, float, float]],
    flat_rss: float | None,
) -> None:
    base = results.get("fp32")
    rows = []
    for key, (labels, seconds, rss, accuracy) in results.items():
        same = None if base is None else sum(a == b for a, b in zip(labels, base[0], strict=True))
        agree = "-" if same is None else f"{100 * same / len(labels):.2f}%"
        rows.append(
            [
                ROWS[key][0],
                f"{args.texts / seconds:.1f}",
                f"{rss:,.0f}",
                f"{models.sizes_mb[key]:,.0f}",
                agree,
                f"{100 * accuracy:.2f}%",
            ]
        )
    print(
        f"{args.texts:,} SMS texts, run {args.run or f'{args.model} finetuned here'}, "
        f"batch {args.batch_size}, "
        f"{torch.get_num_threads()} threads; wall time includes start-up and model loading"
    )
    print_table(["engine", "texts/s", "peak RSS MB", "model MB", "agrees with fp32", "test acc"], rows)
    speeds = {k: args.texts / r[1] for k, r in results.items()}
    fastest = max((k for k in speeds if k != "pipeline"), key=speeds.__getitem__, default=None)
    if fastest is not None:
        line = f"\nfastest gptclf engine: {ROWS[fastest][0]}"
        if "fp32" in speeds:
            line += f", {speeds[fastest] / speeds['fp32']:.2f}x gptclf fp32"
        if "pipeline" in speeds:
            line += f", {speeds[fastest] / speeds['pipeline']:.2f}x the HF pipeline"
        print(line)
    if flat_rss is not None and base is not None:
        print(f"RSS for {args.texts * args.scale:,} texts / RSS for {args.texts:,}: {flat_rss / base[2]:.3f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--build"]:
        _build(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(","))
    else:
        main()
