"""What to replay: the frames of one or more Cityscapes roots (or of CamVid sequences) in the order
the runtime plays them, with their labels, and the replay's settings."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from iapc.errors import UserError

RECORDED_FPS = 17.0  # Cityscapes capture rate
CAMVID_FPS = 1.0  # CamVid's labelled frames are 30 video frames (1 s) apart


@dataclass
class ReplayConfig:
    roots: list[Path]  # one Cityscapes root, or the target roots of the continual cycle in turn
    split: str = "val"
    rounds: int = 1  # passes over all roots within one runtime run (adaptation carries over)
    rate: float | None = RECORDED_FPS  # frames per second; None = as fast as the runtime goes
    checkpoint: str | None = None  # None: the runtime's embedded synthetic source model
    model: str | None = None
    input_size: tuple[int, int] | None = None  # (width, height) of the engine
    classes: str = "19"  # "16"/"13" for SYNTHIA-trained models
    runtime_config: str | None = None  # YAML handed to iapc-runtime --config
    export_every_steps: int | None = None
    method: str | None = None  # iapc-runtime --method of the adapted run (None: its default)
    baseline: bool = True  # also replay the same frames with --no-adapt
    out: Path = Path("replay")
    save_masks: bool = False  # write the masks of annotated frames (train ids) under OUT/masks
    stall_timeout_s: float = 600.0  # no message for this long while the runtime lives: give up
    progress: bool = True
    # A CamVid ROOT[:SEQ[/SPLIT],...] selection replayed instead of Cityscapes roots (``roots``
    # then holds its root; ``split`` is that of the sequences that name none).
    camvid: str | None = None


@dataclass(frozen=True)
class PlannedFrame:
    position: int  # index within one round, in the runtime source's order
    domain: str
    image: Path
    label: Path | None  # *_gtFine_labelIds.png, or None for unannotated sequence frames
    label_set: str = "cityscapes"  # "camvid": a CamVid *annot/ label (iapc.data.read_train_ids)

    @property
    def name(self) -> str:
        name = self.image.name
        return name.removesuffix("_leftImg8bit.png") if name.endswith("_leftImg8bit.png") \
            else self.image.stem


@dataclass
class ReplayPlan:
    domains: list[str]
    locations: list[str]  # what the runtime reads for each domain (root or split folder)
    frames: list[PlannedFrame]  # one round
    rounds: int
    source_flag: str = "--cityscapes-sequence"  # the runtime option that reads ``locations``

    @property
    def frames_per_round(self) -> int:
        return len(self.frames)

    @property
    def total_frames(self) -> int:
        return self.frames_per_round * self.rounds

    @property
    def runtime_location(self) -> str:
        """The ``--cityscapes-sequence`` argument: several roots play in turn (os.pathsep)."""
        return os.pathsep.join(self.locations)

    def locate(self, frame_id: int) -> tuple[int, PlannedFrame]:
        """frame_id -> (round from 0, the planned frame)."""
        return frame_id // self.frames_per_round, self.frames[frame_id % self.frames_per_round]


def domain_names(roots: list[Path]) -> list[str]:
    """Folder names, made unique with a suffix where two roots share one."""
    return unique_names([root.resolve().name or str(root) for root in roots])


def unique_names(wanted: list[str]) -> list[str]:
    """``wanted`` with a ``'`` appended to a name each time it repeats."""
    names: list[str] = []
    for name in wanted:
        while name in names:
            name += "'"
        names.append(name)
    return names


def runtime_location(root: Path, split: str) -> tuple[str, bool]:
    """(what to give the runtime for ``split`` of ``root``, whether it is a sequence folder).

    The runtime reads a root's ``val`` split by itself; other splits are given as their folder.
    """
    if not root.is_dir():
        raise UserError(f"Cityscapes root {root} does not exist: give a folder containing "
                        f"leftImg8bit_sequence/{split} or leftImg8bit/{split}")
    for sequence, folder in ((True, "leftImg8bit_sequence"), (False, "leftImg8bit")):
        if (root / folder / split).is_dir():
            return (str(root) if split == "val" else str(root / folder / split)), sequence
    raise UserError(f"{root} has neither leftImg8bit_sequence/{split} nor leftImg8bit/{split}: "
                    "give a Cityscapes root (e.g. one written by 'iapc synth') and its --split")


def plan_domain(root: Path, domain: str, split: str, start: int) -> tuple[str, list[PlannedFrame]]:
    """The frames of one root in the order the runtime plays them, with their labels."""
    from iapc.data import find_cityscapes
    from iapc.runtime.sources import cityscapes_source

    location, sequence = runtime_location(root, split)
    images = cityscapes_source(location).images  # the runtime's own listing, hence its order
    labels = {s.image: s.label for s in find_cityscapes(root, split, sequence=sequence)}
    frames = [PlannedFrame(start + i, domain, image, labels.get(image))
              for i, image in enumerate(images)]
    return location, frames


def build_plan(roots: list[Path], split: str, rounds: int) -> ReplayPlan:
    if rounds < 1:
        raise UserError(f"--rounds must be 1 or more, got {rounds}")
    domains, locations, frames = domain_names(roots), [], []
    for root, domain in zip(roots, domains):
        location, domain_frames = plan_domain(root, domain, split, len(frames))
        locations.append(location)
        frames.extend(domain_frames)
    if not any(f.label is not None for f in frames):
        raise UserError(f"no frame under {', '.join(map(str, roots))} has a gtFine/{split} "
                        "*_gtFine_labelIds.png label: nothing to evaluate")
    return ReplayPlan(domains, locations, frames, rounds)


def camvid_location(spec: str, split: str) -> str:
    """The ``--camvid-sequence`` argument: ``spec`` with each sequence's split written out
    (``split`` for those that name none; every sequence of ``split`` when it names none)."""
    from iapc.data import camvid_sequence, find_camvid, parse_camvid_spec

    root, items = parse_camvid_spec(spec)
    if not items:
        sequences = dict.fromkeys(camvid_sequence(s.name) for s in find_camvid(root, split))
        items = [(sequence, None) for sequence in sequences]
    return f"{root}:" + ",".join(f"{sequence}/{own or split}" for sequence, own in items)


def build_camvid_plan(spec: str, split: str, rounds: int) -> ReplayPlan:
    """CamVid sequences in turn, one domain each, in the order the runtime plays them (the same
    listing, :func:`iapc.data.find_camvid_spec`); every CamVid frame is labelled."""
    from iapc.data import find_camvid_spec, parse_camvid_spec

    if rounds < 1:
        raise UserError(f"--rounds must be 1 or more, got {rounds}")
    location = camvid_location(spec, split)
    root, items = parse_camvid_spec(location)
    domains = unique_names([sequence for sequence, _ in items])
    frames: list[PlannedFrame] = []
    for domain, (sequence, own) in zip(domains, items):
        for sample in find_camvid_spec(f"{root}:{sequence}/{own}"):
            frames.append(PlannedFrame(len(frames), domain, sample.image, sample.label, "camvid"))
    return ReplayPlan(domains, [location], frames, rounds, source_flag="--camvid-sequence")


def plan_replay(cfg: ReplayConfig) -> ReplayPlan:
    """The plan of ``cfg``: its CamVid selection, else its Cityscapes roots."""
    if cfg.camvid is not None:
        return build_camvid_plan(cfg.camvid, cfg.split, cfg.rounds)
    return build_plan(cfg.roots, cfg.split, cfg.rounds)
