"""How the domain bank's shift detection sees bench_continual's cycle, without the runtime.

Plays the frames of the continual protocol (city -> night -> fog -> rain, repeated; the frames
bench_continual writes) through :class:`~iapc.daemon.domains.DomainTracker` as the daemon
receives them (every ``--sample-every``-th frame), once per tracker setting, and reports per
setting: the detection lag (stream frames from a change of domain to its shift; also over the
returns to a banked domain alone), shifts that are not a change of domain (false), visits whose
change was never noticed, and which banked domain each visit went to. A visit's domain should
be the same id in every round, and different domains different ids. Takes seconds: descriptors
are computed once per frame.

With ``--camvid`` the visits are real CamVid sequences instead, whole and in frame order (e.g.
day 0016E5 -> dusk 0001TP -> day Seq05VD, what ``iapc replay --camvid`` plays); two day
sequences may share a domain.

    .venv/bin/python benchmarks/domain_tracking.py
    .venv/bin/python benchmarks/domain_tracking.py --rounds 10 --setting 1.6,12,64,1.5,4 --setting 1.6,12,64,1.5,0
    .venv/bin/python benchmarks/domain_tracking.py --camvid ../shared/real/CamVid:0016E5,0001TP,Seq05VD --rounds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from bench_continual import DOMAINS, cached_data_folder, write_domains  # this folder

LABEL_EVERY = 5  # bench_continual's default: the same cached frames


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--sequences", type=int, default=10, help="snippets per domain (as bench_continual)")
    p.add_argument("--sample-every", type=int, default=None,
                   help="the daemon sees every k-th frame (default: the runtime's setting)")
    p.add_argument("--setting", action="append", default=[],
                   metavar="Z,WINDOW,MIN_FRAMES,MATCH,RETURN",
                   help="a tracker setting to compare (repeatable; default: the runtime's): "
                        "shift_z, shift_window, domain_min_frames, shift_match_factor, "
                        "shift_return_window")
    p.add_argument("--data", type=Path, default=None,
                   help="where the domains are (default: bench_continual's cache)")
    p.add_argument("--camvid", metavar="ROOT:SEQ,...", default=None,
                   help="real CamVid sequences as the visits instead (every split of each, in order)")
    return p.parse_args()


def camvid_descriptors(spec: str) -> dict[str, np.ndarray]:
    """(frames, 12) descriptors of each CamVid sequence of ``spec``, frames in order."""
    from iapc.daemon.domains import describe
    from iapc.data import camvid_sequence, find_camvid_spec, read_image_bgr

    out: dict[str, list] = {}
    for sample in find_camvid_spec(spec):
        out.setdefault(camvid_sequence(sample.image.stem), []).append(
            describe(read_image_bgr(sample.image)))
    return {name: np.stack(found) for name, found in out.items()}


def cycle_descriptors(data: Path) -> dict[str, np.ndarray]:
    """(frames, 12) descriptors of each domain's visit, frames in the order the runtime plays them."""
    from iapc.daemon.domains import describe
    from iapc.data import read_image_bgr
    from iapc.runtime.sources import cityscapes_source

    out = {}
    for domain in DOMAINS:
        images = cityscapes_source(str(data / domain)).images
        out[domain] = np.stack([describe(read_image_bgr(path)) for path in images])
    return out


def track(visits: list[tuple[str, np.ndarray]], every: int, setting: tuple) -> dict:
    """Each visit's first shift (lag, domain id), shifts that are not a change, missed changes."""
    from iapc.daemon.domains import DomainTracker

    z, window, min_frames, match, return_window = setting
    tracker = DomainTracker(z_threshold=z, window=int(window), min_frames=int(min_frames),
                            match_factor=match, return_window=int(return_window))
    lags, return_lags, false, ids = [], [], 0, {d: [] for d, _ in visits}
    for number, (domain, descriptors) in enumerate(visits):
        noticed = False
        for index in range(0, len(descriptors), every):
            shift = tracker.observe_descriptor(descriptors[index])
            if shift is None:
                continue
            if number == 0 or noticed:
                false += 1  # the first visit has nothing to change from
            else:
                noticed = True
                lags.append(index)
                if shift.known:
                    return_lags.append(index)
                ids[domain].append(str(shift.to))
        if number and not noticed:
            ids[domain].append("-")  # served by the previous domain's state all visit
    return {"lags": lags, "return_lags": return_lags, "false": false, "ids": ids}


def main() -> int:
    from iapc.adapt.embedded import EMBEDDED_SIZE
    from iapc.runtime.config import DaemonConfig

    args = parse_args()
    defaults = DaemonConfig()
    every = args.sample_every or defaults.sample_every
    own = (defaults.shift_z, defaults.shift_window, defaults.domain_min_frames,
           defaults.shift_match_factor, defaults.shift_return_window)
    settings = [tuple(float(v) for v in s.split(",")) for s in args.setting] or [own]
    if args.camvid:
        descriptors = camvid_descriptors(args.camvid)
    else:
        data = args.data or cached_data_folder(args.sequences, LABEL_EVERY)
        write_domains(data, args.sequences, EMBEDDED_SIZE, LABEL_EVERY)
        descriptors = cycle_descriptors(data)
    visits = [(d, descriptors[d]) for _ in range(args.rounds) for d in descriptors]
    sizes = "/".join(str(len(v)) for v in descriptors.values())
    print(f"# {args.rounds} rounds x {len(descriptors)} domains x {sizes} frames, "
          f"the daemon sees every {every}. frame; ids: the domain each visit went to per round, "
          "'-' = change not noticed")
    print(f"{'z,window,min,match,return':>26} {'lag':>5} {'return':>6} {'false':>5}  ids per round")
    for setting in settings:
        result = track(visits, every, setting)
        lag, return_lag = (f"{np.mean(result[k]):5.1f}" if result[k] else "  n/a"
                           for k in ("lags", "return_lags"))
        ids = " ".join(f"{d}:{''.join(v)}" for d, v in result["ids"].items())
        name = ",".join(f"{v:g}" for v in setting)
        print(f"{name:>26} {lag} {return_lag:>6} {result['false']:>5}  {ids}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
