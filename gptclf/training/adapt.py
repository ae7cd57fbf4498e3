"""The ``gptclf adapt`` verb: continue GPT-2's pretraining on the user's own unlabelled texts.

Read top to bottom, :func:`adapt` is the job: check every setting (nothing written on bad input);
fetch what is missing (the tokenizer, pretrained weights); read, tokenise and pack the texts
(:mod:`gptclf.training.adapt_data`), refusing too few before anything is written; open the work
folder beside ``--out`` (:mod:`gptclf.rundir`) and save the blocks in it; measure the validation
perplexity; train with next-token cross-entropy through the tied output layer
(:class:`gptclf.model.lm.NextToken` and :class:`gptclf.tasks.language_model.LanguageModel` in the
flat loop of :func:`gptclf.training.loop.fit`: its checkpoints, Ctrl-C/SIGTERM, ``--resume`` and
DDP); keep the weights of the lowest validation loss; write a Hugging Face ``GPT2LMHeadModel``
folder (:mod:`gptclf.interop.lm_folder`) and swap it in whole. It never prints: ``progress``
receives everything for people.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptclf.data.corpus import TextSource, file_texts, prepared_texts
from gptclf.distributed import Shard
from gptclf.errors import BadInputError, Interrupted, write_error
from gptclf.fetch.artefacts import base_weights, ensure_tokenizer, sms_spam_path
from gptclf.inference.batching import LabelledSet
from gptclf.inference.loop import labelled_metrics
from gptclf.interop.lm_folder import write_lm_folder
from gptclf.model.classifier import merge_lora
from gptclf.model.lm import NextToken, apply_lm_scope
from gptclf.model.tokenizer import load_tokenizer
from gptclf.model.weights import load_weights
from gptclf.progress import Progress, TrainProgress
from gptclf.rundir import RunBuild, check_not_a_source, check_out, work_dir
from gptclf.rundir.layout import CHECKPOINT_NAME
from gptclf.tasks.language_model import LanguageModel
from gptclf.training.adapt_data import CORPUS_DIR, Corpus, build_corpus
from gptclf.training.adapt_progress import TokenRate
from gptclf.training.adapt_settings import RESUME_CHANGEABLE, AdaptPlan, AdaptSettings, adapt_plan
from gptclf.training.checkpoints import InterruptGuard, load_checkpoint, with_resume_hint
from gptclf.training.loop import History, fit


@dataclass
class AdaptResult:
    """What an adapt run did (its figures are also in the folder's config.json and model card).

    Attributes:
        out: The folder written.
        sources: Per origin of texts: ``source``, ``texts``, ``tokens``.
        corpus: Totals: ``texts``, ``tokens``, ``train_texts``, ``validation_texts``, ``capped``.
        blocks: ``block_size``, ``train`` and ``validation`` blocks, ``train_tokens`` and
            ``validation_tokens`` (tokens the blocks hold, ``<|endoftext|>`` separators included).
        before: Validation ``loss``/``perplexity``/``accuracy`` of the starting weights (None
            without validation texts).
        after: The same for the kept weights.
        history: The loop's history (``val_ppl`` per evaluation).
        trainable_params: Parameters trained.
        total_params: Parameters of the model.
        train_seconds: Seconds of this process's training steps (evaluations left out).
        tokens_per_second: Training tokens per second over those steps.
        notes: Lines for people (set-aside rows not read, a cap reached, ...).
    """

    out: Path
    sources: list[dict[str, Any]]
    corpus: dict[str, Any]
    blocks: dict[str, int]
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    history: History
    trainable_params: int
    total_params: int
    train_seconds: float
    tokens_per_second: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``--json`` prints)."""
        return {
            "out": str(self.out),
            "sources": self.sources,
            "corpus": self.corpus,
            "blocks": self.blocks,
            "perplexity_before": (self.before or {}).get("perplexity"),
            "perplexity_after": (self.after or {}).get("perplexity"),
            "validation_before": self.before,
            "validation_after": self.after,
            "best_step": (self.history.best or {}).get("step"),
            "steps": self.history.steps,
            "stopped_early": self.history.stopped_early,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "train_seconds": self.train_seconds,
            "tokens_per_second": self.tokens_per_second,
            "notes": self.notes,
        }


def adapt(
    settings: AdaptSettings,
    *,
    progress: TrainProgress | None = None,
    download_progress: Progress | None = None,
    shard: Shard = Shard(),  # frozen, so one shared default is safe
) -> AdaptResult:
    """Run ``gptclf adapt``: further-pretrain GPT-2 on texts and write a Hugging Face folder.

    ``--out`` is at every moment absent, the old folder or the new one: the folder is built in a
    work folder beside it, which a signal or a kill leaves for ``--resume`` (its checkpoint and
    blocks) and a finished run swaps in whole.

    Raises:
        BadInputError: Bad settings or texts (nothing written), exit code 2.
        DownloadError: Something missing could not be downloaded.
        TrainingError: The loss became NaN or infinite.
        Interrupted: Ctrl-C or SIGTERM: from the first step on a checkpoint is saved for ``--resume``.
        DiskFullError: The disk filled while writing.
    """
    progress = progress or TrainProgress()
    if settings.out is None:
        adapt_plan(settings)  # raises, naming --out with every other problem
    if not str(settings.out).strip():  # Path("") is the working folder, which --force would replace
        raise BadInputError("--out is empty: name the folder to write the model into, e.g. --out lm/mine")
    out = shard.from_main(Path(str(settings.out)).expanduser().resolve())
    with InterruptGuard() as guard:
        settings, resume_state = _checked_settings(out, settings)
        plan = adapt_plan(settings)
        if shard.distributed and "-" in (settings.input or []):
            raise BadInputError("--input - (stdin) cannot be read by several processes: give a file")
        with shard.main_first():
            tokenizer_dir = ensure_tokenizer(plan.home, settings.mirror, download_progress)
            weights = None
            if settings.weights == "pretrained":
                weights = base_weights(plan.model_name, plan.home, settings.mirror, download_progress)
        corpus = None if resume_state else _read_corpus(settings, plan, tokenizer_dir, progress)
        shard.barrier()  # every rank has checked --out and its texts before rank 0 makes the work folder
        build = None
        if shard.is_main:
            build = RunBuild.open(out, force=settings.force, resume=settings.resume, note=progress.message)
            if settings.resume:
                guard.before = f"the interrupted run in {build.path} is kept for --resume"
        try:
            corpus = _placed_corpus(work_dir(out), corpus, shard)
            job = _Job(settings, plan, out, work_dir(out), resume_state, guard, progress, shard)
            result = job.run(corpus, tokenizer_dir, weights)
            if build is not None:
                build.commit()
                shutil.rmtree(out / CORPUS_DIR, ignore_errors=True)  # kept until the folder was whole
        except BaseException as exc:
            if build is not None:
                build.close(exc)
            raise
        if build is not None:
            build.close()
        guard.check(f"stopped after the model was written completely to {out}")
        return result


def _checked_settings(out: Path, settings: AdaptSettings) -> tuple[AdaptSettings, dict[str, Any] | None]:
    """The settings to run with: an interrupted run's saved ones and its checkpoint (``--resume``),
    or the given ones once ``--out`` may be written. Writes nothing."""
    if not settings.resume:
        adapt_plan(settings)  # every problem of the options before any file is looked at
        weights = None if settings.weights in ("pretrained", "random") else settings.weights
        sources = {
            "--data": settings.data,
            "--model": settings.model,
            "--weights": weights,
            "--source": settings.source,
        }
        sources |= {f"--input {p}": p for p in settings.input or [] if p != "-"}
        check_not_a_source(out, sources)
        check_out(out, force=settings.force, resume=False)
        return settings, None
    check_out(out, force=False, resume=True)
    state = load_checkpoint(work_dir(out) / CHECKPOINT_NAME)
    saved = AdaptSettings.from_dict(state["extra"]["settings"])
    conflicts = []
    for name in sorted(settings.given - RESUME_CHANGEABLE - {"force"}):
        if settings.option(name) != saved.option(name):
            conflicts.append(
                f"--{name.replace('_', '-')} {settings.option(name)} (the run used {saved.option(name)})"
            )
    if conflicts:
        raise BadInputError("cannot change these on --resume: " + "; ".join(conflicts))
    changed = {name: settings.option(name) for name in settings.given & RESUME_CHANGEABLE}
    return saved.with_options({**changed, "out": str(out), "resume": True}, given=settings.given), state


def _read_corpus(settings: AdaptSettings, plan: AdaptPlan, tokenizer_dir: Path, progress: Progress) -> Corpus:
    """The texts of ``--input`` and ``--data``, tokenised and packed; its ``notes`` for people."""
    sources: list[TextSource] = []
    notes: list[str] = []
    if settings.data is not None:
        folder = Path(settings.data).expanduser().resolve()
        known = {"sms-spam": sms_spam_path(plan.home)}  # where prepare's known dataset is cached
        found = prepared_texts(folder, Path(settings.source) if settings.source else None, known)
        if not any(s.texts for s in found.sources):
            raise BadInputError(f"--data {folder} holds no texts in its train and validation splits")
        sources += found.sources
        notes += [found.note] if found.note else []
    for path in settings.input or []:
        sources.append(file_texts(path, settings.text_column, settings.input_format, settings.encoding))
    enc = load_tokenizer(tokenizer_dir)
    corpus = build_corpus(
        sources, enc, plan.block_size, validation=settings.validation, seed=settings.seed,
        max_tokens=settings.max_tokens, progress=progress,
    )  # fmt: skip
    if corpus.info["capped"]:
        notes.append(
            f"--max-tokens {settings.max_tokens:,}: "
            f"the texts after the first {corpus.info['texts']:,} were left out"
        )
    corpus.info["notes"] = notes  # saved with the blocks: a resumed run says them too
    return corpus


def _placed_corpus(work: Path, corpus: Corpus | None, shard: Shard) -> Corpus:
    """The blocks, saved in the work folder by rank 0 (a fresh run) or read back from it (``--resume``)."""
    folder = work / CORPUS_DIR
    if corpus is not None:
        if shard.is_main:
            try:
                corpus.save(folder)
            except OSError as exc:
                raise write_error(exc, work.parent) from None
        shard.barrier()
        return corpus
    shard.barrier()
    return Corpus.load(folder)


@dataclass
class _Job:
    """One run's settings and surroundings, and its training and writing steps."""

    settings: AdaptSettings
    plan: AdaptPlan
    out: Path
    work: Path
    resume_state: dict[str, Any] | None
    guard: InterruptGuard
    progress: TrainProgress
    shard: Shard

    def run(self, corpus: Corpus, tokenizer_dir: Path, weights: Path | None) -> AdaptResult:
        """Train on ``corpus``, keep the best weights, write the folder (rank 0) into the work folder."""
        s, p = self.settings, self.plan
        notes = list(corpus.info.get("notes", []))
        gpt = load_weights(s.weights, p.config, p.model_name, seed=s.seed, pretrained=weights)
        trainable = apply_lm_scope(gpt, p.scope, seed=s.seed)
        total = sum(t.numel() for t in gpt.parameters())
        model = NextToken(gpt).to(p.device)
        task = LanguageModel()
        train = LabelledSet(corpus.train.source(), corpus.train.targets(), task)
        val = (
            LabelledSet(corpus.validation.source(), corpus.validation.targets(), task)
            if len(corpus.validation)
            else None
        )
        blocks = {
            "block_size": p.block_size, "train": len(corpus.train), "validation": len(corpus.validation),
            "train_tokens": corpus.train.tokens, "validation_tokens": corpus.validation.tokens,
        }  # fmt: skip
        self._tell(corpus, blocks, trainable, total, notes)
        before = self.resume_state["extra"]["before"] if self.resume_state else self._evaluate(model, val)
        if before is not None and not self.resume_state:
            self.progress.message(
                f"validation perplexity of the starting weights: {before['perplexity']:,.2f}"
            )
        rate = TokenRate(self.progress, corpus.train.tokens * s.train.epochs)
        history = self._fit(
            model, train, val, rate, {"before": before, "corpus": corpus.info, "blocks": blocks}
        )
        for row in history.rows:
            row["train_acc"] = None  # the step counts whole texts right; blocks never are
        after = _kept(history)
        result = AdaptResult(
            self.out, corpus.sources, corpus.info, blocks, before, after, history, trainable, total,
            rate.train_seconds, rate.tokens_per_second, notes,
        )  # fmt: skip
        if self.shard.is_main:
            merge_lora(gpt)
            try:
                write_lm_folder(self.work, gpt, tokenizer_dir, self._record(result), self.out.name)
            except OSError as exc:
                raise write_error(exc, self.out) from None
        return result

    def _tell(
        self, corpus: Corpus, blocks: dict[str, int], trainable: int, total: int, notes: list[str]
    ) -> None:
        """Say what the run reads, from where, and what trains (a resumed run: what it read when it
        started; it continues on the blocks saved then and does not read its inputs again)."""
        if self.resume_state:
            self.progress.message(
                "resuming on the blocks saved when the run started (the inputs are not read again):"
            )
        for src in corpus.sources:
            self.progress.message(f"{src['texts']:,} texts, {src['tokens']:,} tokens: {src['source']}")
        for note in notes:
            self.progress.message(note)
        self.progress.message(
            f"{blocks['train']:,} training blocks of {blocks['block_size']} tokens from "
            f"{corpus.info['train_texts']:,} texts, {blocks['validation']:,} validation blocks "
            f"({blocks['validation_tokens']:,} tokens) "
            f"from {corpus.info['validation_texts']:,} held-out texts"
        )
        self.progress.message(
            f"model {self.plan.model_name} ({self.settings.weights} weights), trainable scope "
            f"{self.settings.trainable}: {trainable:,} of {total:,} parameters train"
        )

    def _evaluate(self, model: NextToken, val: LabelledSet | None) -> dict[str, Any] | None:
        """Validation loss, perplexity and next-token accuracy of the model as it is."""
        if val is None:
            return None
        metrics, _ = labelled_metrics(
            model, val, device=self.plan.device, precision=self.plan.precision,
            batch_size=self.settings.train.eval_batch_size, shard=self.shard,
        )  # fmt: skip
        return {k: metrics[k] for k in ("loss", "perplexity", "accuracy", "tokens")}

    def _fit(
        self,
        model: NextToken,
        train: LabelledSet,
        val: LabelledSet | None,
        rate: TokenRate,
        extra: dict[str, Any],
    ) -> History:
        """:func:`gptclf.training.loop.fit` with checkpoints in the work folder and the resume hint."""
        s, p = self.settings, self.plan
        try:
            return fit(
                model, train, val, s.train, device=p.device, precision=p.precision, seed=s.seed,
                checkpoint=self.work / CHECKPOINT_NAME, resume=self.resume_state,
                extra={"settings": {**s.to_dict(), "out": str(self.out)}, **extra},
                progress=rate, shard=self.shard, guard=self.guard,
            )  # fmt: skip
        except Interrupted as exc:
            hint = f"continue with `gptclf adapt --out {self.out} --resume`"
            raise Interrupted(with_resume_hint(str(exc), hint), exc.exit_code - 128) from None

    def _record(self, result: AdaptResult) -> dict[str, Any]:
        """config.json's ``gptclf`` object."""
        s = self.settings
        return {
            "source": "gptclf adapt",
            "base_model": self.plan.model_name,
            "weights": s.weights,
            "trainable": s.trainable,
            "seed": s.seed,
            "train": {
                k: s.train.to_dict()[k]
                for k in ("epochs", "batch_size", "grad_accum", "lr", "weight_decay", "schedule", "warmup")
            },
            "precision": self.plan.precision.name,
            "data": {"sources": result.sources, **result.corpus, **result.blocks},
            "validation_before": result.before,
            "validation_after": result.after,
            "block_size": self.plan.block_size,
            "steps": result.history.steps,
            "best_step": (result.history.best or {}).get("step"),
        }


def _kept(history: History) -> dict[str, Any] | None:
    """The validation figures of the kept weights (None without validation)."""
    best = history.best
    if best is None or best.get("val_loss") is None:
        return None
    return {
        "loss": best["val_loss"],
        "perplexity": best["val_ppl"],
        "accuracy": best["val_acc"],
        "step": best["step"],
    }
