"""``iapc replay``: replay recorded Cityscapes drives through the real runtime and report mIoU over
time, latency, dropped frames, hot-swaps and adaptation.

    iapc replay --cityscapes ROOT --split val --out replay/
    iapc replay --cycle FOG NIGHT RAIN --rounds 10 --fast --out continual/
    iapc replay --camvid CamVid:0016E5,0001TP,Seq05VD --out camvid/   (CamVid sequences in turn)

The runtime is started as a child process exactly as a user starts it (``iapc-runtime
--cityscapes-sequence ...`` or ``--camvid-sequence ...``) with a private run folder and a free loopback port, so the replay
measures the same supervisor, inference process, adaptation daemon, engine store, hot-swaps and
ZeroMQ stream that a vehicle runs. This process only subscribes: it scores every mask whose frame
has a label (``gtFine``, CamVid ``*annot``) as it arrives, keeping the engine version that produced it, and then runs
the runtime a second time with ``--no-adapt`` over the same frames for the source-only baseline.

Frame ids are positions in the source's order (the runtime numbers captured frames from 0), so a
mask's ``frame_id`` maps back to the file it came from: ``round = id // F``, ``position = id % F``
for ``F`` frames per round. Recorded sources are lossless in the runtime, so a missing id is a
frame lost on the way (publisher or subscriber), and the report counts it.

Apart from the runtime core on purpose: it observes the runtime only from outside, as any user
does. :mod:`~iapc.replay.plan` (what to replay), :mod:`~iapc.replay.launch` (starting and
stopping the runtime), :mod:`~iapc.replay.record` (receiving and scoring what it publishes),
:mod:`~iapc.replay.run` (one replay), :mod:`~iapc.replay.report` (JSON, Markdown, plots),
:mod:`~iapc.replay.cli` (the command).
"""
