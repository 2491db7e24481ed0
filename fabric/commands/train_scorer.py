"""Train the model-choice scorer on labelled JSONL; write the model file, print held-out metrics.

Holds out a fixed seeded share of every source, calibrates the safety and complexity
thresholds on out-of-fold scores of the rest, trains on the rest, and evaluates the
router's whole model choice (context, scorer, rules) on the held-out rows. The same seed
and data give the same file, byte for byte. Exit codes: 0 written, 2 unreadable data.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

from router.scorer import DEFAULT_MODEL, write_model
from router.training import (
    DataError,
    TrainSettings,
    benign_imperatives,
    calibrate,
    contrast_questions,
    evaluate,
    evaluate_out_of_fold,
    out_of_fold,
    out_of_fold_safety,
    read_examples,
    rules_for,
    safety_tradeoff,
    split_holdout,
    train_scorer,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "prompts" / "dev.jsonl"
DEFAULT_OUTPUT = REPO / "router" / "data" / DEFAULT_MODEL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="labelled JSONL: {id, source, label, request} a line (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="model file (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=7, help="split, folds and shuffles (default: 7)")
    parser.add_argument("--holdout", type=float, default=0.2,
                        help="share of each source held out for the metrics (default: 0.2)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--folds", type=int, default=4, help="calibration folds (default: 4)")
    parser.add_argument("--safety-recall", type=float, default=0.96,
                        help="calibrate the safety threshold for this SAFETY recall on out-of-fold scores "
                             "(default: 0.96, a margin over the 0.95 target)")
    parser.add_argument("--source-weight", action="append", default=None, metavar="SOURCE=W",
                        help="weight a source's examples (default: xstest=4, the contrast pairs "
                             "that teach the safety boundary and are few)")
    parser.add_argument("--contrast-source", default="xstest",
                        help="source whose non-SAFETY rows are the harmless-but-alarming set")
    parser.add_argument("--synthetic-imperatives", type=int, default=400, metavar="N",
                        help="add N harmless requests (GENERAL: imperatives, bare short asks, small talk) "
                             "to the training rows only, against dev.jsonl's 'short imperative = unsafe' "
                             "bias (default: 400)")
    parser.add_argument("--synthetic-contrasts", type=int, default=1200, metavar="N",
                        help="add N templated requests pairing violent verbs with harmless and with human "
                             "targets, definitions and history questions, to the training rows only "
                             "(router/training.py says why; default: 1200)")
    parser.add_argument("--limit", type=int, default=0, help="use only N rows, spread over the file (quick runs)")
    parser.add_argument("--report", type=Path, help="also write the held-out report (markdown) here")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    try:
        examples = read_examples(args.data)
    except (OSError, DataError) as exc:
        print(f"train-scorer: {exc}", file=sys.stderr)
        return 2
    if args.limit:  # every k-th row, so every source still appears
        examples = examples[:: max(1, len(examples) // args.limit)][: args.limit]
    weights = {}
    for item in args.source_weight or ["xstest=4"]:
        source, _, value = item.partition("=")
        try:
            weights[source] = float(value)
        except ValueError:
            print(f"train-scorer: --source-weight {item!r}: expected SOURCE=NUMBER", file=sys.stderr)
            return 2
    settings = TrainSettings(seed=args.seed, epochs=args.epochs, folds=args.folds,
                             safety_recall=args.safety_recall, source_weights=weights)
    train, held = split_holdout(examples, args.holdout, args.seed)
    print(f"{len(examples)} rows: {len(train)} to train, {len(held)} held out (seed {args.seed}); "
          f"+{args.synthetic_imperatives} synthetic harmless requests and "
          f"+{args.synthetic_contrasts} synthetic contrast requests to train")
    train += benign_imperatives(args.synthetic_imperatives, args.seed)
    train += contrast_questions(args.synthetic_contrasts, args.seed)
    oof = out_of_fold(train, settings, log=print)
    thresholds = calibrate(train, oof.probs, settings.safety_recall)
    print(f"calibrated thresholds: {thresholds}")
    print(out_of_fold_safety(train, oof.probs, thresholds["safety"], args.contrast_source))
    cross = evaluate_out_of_fold(train, oof, thresholds, args.contrast_source)
    print(f"\nCross-validated ({settings.folds} folds over the {sum(map(sum, cross.confusion))} real training "
          "rows, each decided by a model that did not train on it), the router's model choice:\n")
    print(cross.report())
    print("\nSafety threshold trade-off, out of fold:\n")
    print(safety_tradeoff(train, oof.probs, sorted({thresholds["safety"], 0.5, 0.6, 0.7, 0.8, 0.9}),
                          args.contrast_source))
    meta = {
        "data_sha256": hashlib.sha256(args.data.read_bytes()).hexdigest()[:16],
        "rows": len(examples), "seed": args.seed, "holdout": args.holdout, "epochs": args.epochs,
        "source_weights": weights, "synthetic_imperatives": args.synthetic_imperatives,
        "synthetic_contrasts": args.synthetic_contrasts,
    }
    scorer = train_scorer(train, settings, thresholds, meta)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    size = write_model(scorer.model, args.output)
    print(f"wrote {args.output}: {size} bytes, {len(scorer)} features")
    report = evaluate(held, scorer, rules_for(scorer), args.contrast_source).report()
    print(f"\nHeld-out ({len(held)} rows), the router's model choice with the default rules:\n")
    print(report)
    if args.report:
        args.report.write_text(report + "\n")
    print(f"\ndone in {time.perf_counter() - started:.1f}s")
    return 0
