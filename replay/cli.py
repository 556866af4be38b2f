"""``iapc replay``: the command's options, and running it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from iapc.errors import UserError
from iapc.metrics import CAMVID11
from iapc.method_config import METHOD_NAMES
from iapc.replay.plan import CAMVID_FPS, RECORDED_FPS, ReplayConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from iapc.runtime.config import parse_size

    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--cityscapes", type=Path, metavar="ROOT",
                      help="a Cityscapes root: leftImg8bit_sequence snippets (else leftImg8bit)")
    what.add_argument("--cycle", type=Path, nargs="+", metavar="ROOT",
                      help="continual protocol: these target roots in turn, --rounds times")
    what.add_argument("--camvid", metavar="ROOT[:SEQ,...]",
                      help="CamVid sequences in turn, e.g. CamVid:0016E5,0001TP,Seq05VD (SEQ/SPLIT: "
                           "one split of it); labelled frames only, 1 s apart")
    parser.add_argument("--split", default=None,
                        help="split to replay (default: val; CamVid: all, its sequences whole)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes over the roots within one runtime run (default 1)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=None,
                      help=f"frames per second (default {RECORDED_FPS:g}, the recorded rate; "
                           f"CamVid {CAMVID_FPS:g})")
    pace.add_argument("--fast", action="store_true", help="as fast as the runtime goes")
    parser.add_argument("--checkpoint", help="source checkpoint (default: the embedded one)")
    parser.add_argument("--model", help="architecture of the checkpoint (default: tiny)")
    parser.add_argument("--input-size", type=parse_size, metavar="WxH",
                        help="engine input size, e.g. 1024x512")
    parser.add_argument("--classes", choices=("19", "16", "13", CAMVID11), default=None,
                        help="classes in the mIoU: 19 (Cityscapes), 16/13 (SYNTHIA mIoU/mIoU*), "
                             "camvid11 (CamVid's 11 classes; the default with --camvid, else 19)")
    parser.add_argument("--runtime-config", metavar="FILE.yaml",
                        help="iapc-runtime config file (adaptation settings, backend, ...)")
    parser.add_argument("--export-every-steps", type=int, metavar="N",
                        help="adaptation steps between engine exports")
    parser.add_argument("--method", choices=METHOD_NAMES, default=None,
                        help="adaptation method of the adapted run (default: the runtime's, iapc)")
    parser.add_argument("--out", type=Path, default=Path("replay"),
                        help="report folder (default ./replay)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the source-only run")
    parser.add_argument("--save-masks", action="store_true",
                        help="keep the masks of annotated frames as train-id PNGs under OUT/masks")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


def mean_classes(args: argparse.Namespace) -> str:
    """The classes the mIoU averages: as given, else CamVid's 11 on CamVid, else Cityscapes' 19."""
    return args.classes or (CAMVID11 if args.camvid is not None else "19")


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    if args.rate is not None and args.rate <= 0:
        raise UserError(f"--rate must be positive frames per second (or use --fast), got {args.rate}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist: give a .pth/.pt file")
    rate = args.rate if args.rate is not None else (CAMVID_FPS if args.camvid else RECORDED_FPS)
    return ReplayConfig(roots=replay_roots(args), split=args.split or default_split(args),
                        rounds=args.rounds, rate=None if args.fast else rate,
                        checkpoint=args.checkpoint,
                        model=args.model, input_size=args.input_size, classes=mean_classes(args),
                        runtime_config=args.runtime_config,
                        export_every_steps=args.export_every_steps, method=args.method,
                        baseline=args.baseline, camvid=args.camvid,
                        out=args.out, save_masks=args.save_masks, progress=args.progress)


def replay_roots(args: argparse.Namespace) -> list[Path]:
    if args.camvid is not None:
        from iapc.data import parse_camvid_spec

        return [parse_camvid_spec(args.camvid)[0]]
    return [args.cityscapes] if args.cityscapes is not None else list(args.cycle)


def default_split(args: argparse.Namespace) -> str:
    return "all" if args.camvid is not None else "val"


# --fast runs frames as fast as inference goes; the daemon adapts at its own pace, so it sees a
# fraction of them and "adapted" is compared with source-only after little adaptation.
FAST_WARNING = ("iapc replay: warning: --fast plays the frames as fast as inference runs, so "
                "the adaptation daemon trains on few of them and 'adapted' vs 'source-only' "
                "measures little adaptation: use --rate FPS (as recorded) for that comparison")


def run(args: argparse.Namespace) -> int:
    from iapc.replay.markdown import headline
    from iapc.replay.run import run_replay

    cfg = config_from_args(args)
    if cfg.rate is None and cfg.baseline:
        print(FAST_WARNING, file=sys.stderr, flush=True)
    report = run_replay(cfg)
    print(headline(report))
    print(f"report: {cfg.out / 'report.json'}, {cfg.out / 'report.md'}")
    return 0
