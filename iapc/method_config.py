"""The adaptation method's settings, torch-free: the IAPC presets and :class:`AdaptConfig`.

Every setting is declared once here (default, range, help; :mod:`iapc.settings`), and from that
declaration come the keys of the ``method:`` section of a runtime config file, the options of
``iapc adapt`` and ``iapc-runtime``, and the ``config`` saved in every checkpoint and engine
manifest. Settings left ``None`` take the preset's value (:meth:`AdaptConfig.resolved`).
See ``docs/METHOD.md`` for the method and the presets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from iapc.errors import UserError
from iapc.settings import check, from_plain, setting, to_plain

# The methods an Adapter exists for (iapc.adapt.adapters.METHODS has one class per name).
METHOD_NAMES = ("none", "bn", "tent", "iapc")
SCHEDULES = ("poly", "constant")
AMP_DTYPE_NAMES = ("bf16", "fp16")


@dataclass(frozen=True)
class LossWeights:
    """The lambdas of ``L = ia*L_IA + im*L_IM + ps*L_PS + pe*L_PE``."""

    ia: float
    im: float
    ps: float
    pe: float


@dataclass(frozen=True)
class Preset:
    """One consistent reading of the method: which importance, which IM, which weights, and how
    the step around the losses treats normalisation statistics and pseudo-labels.

    ``bn_statistics`` .. ``min_confidence`` are where the streaming variant differs (``docs/METHOD.md``); their
    defaults are the paper's and the released code's behaviour.
    """

    name: str
    importance: str  # "probability" (paper), "logit" (released code) or "none" (w = 1, ablation)
    im: str  # "entropy_diversity" (paper) or "entropy" (released code)
    ps_reshape_quirk: bool  # reproduce the released view(N, K, h, w) in the second PS term
    weights: LossWeights
    # "augmented": T's BatchNorm running statistics follow the photometrically augmented crops
    # it trains on (paper, released). "clean": they follow the un-augmented frames, and the
    # gradient path normalises with its batch's statistics without touching them, so
    # augmentation never reaches what gets deployed. "frozen": as clean, but the gradient path
    # normalises with the running (clean) statistics.
    bn_statistics: str = "augmented"
    # Who gives y_hat and the importance: "source" (S with source statistics, paper/released),
    # "memory" (the EMA memory network M, which normalises with T's target statistics), or
    # "source_bn" (S's frozen weights with T's target statistics: BN-adapt as the teacher).
    teacher: str = "source"
    # Class-balance "rare" threshold as a fraction of the crop's pixels; None: the released
    # 64*64 pixels per image whatever the crop (1/32 of the released 512x256 crop).
    rare_fraction: float | None = None
    # Teacher pixels whose top probability is below this are ignored in y_hat (0: none are).
    min_confidence: float = 0.0
    # x2 = photometric augmentation of x1 (paper); False: x2 = x1.
    photometric: bool = True
    # Optimisation defaults of the reading, used where AdaptConfig leaves them None: the paper's
    # 9000-iteration protocol, or an unbounded stream (short warm-up, constant lr, faster EMA).
    lr: float = 1e-4
    classifier_lr_mult: float = 10.0
    warmup_iters: int = 5000
    ema_alpha: float = 0.9999
    schedule: str = "poly"
    # Stochastic restore (CoTTA): after each step every weight returns to its source value with
    # this probability, so no weight drifts for more than about 1/p steps of an unbounded stream.
    restore_probability: float = 0.0
    # Share of the source network's BatchNorm statistics kept wherever statistics follow the
    # target: running mean and variance = w * source + (1 - w) * target estimate, per layer.
    # 0: the target's replace them (BN-adapt); 1: they never move.
    source_statistics_weight: float = 0.0
    # Before each export, the share is chosen label-free among SOURCE_SHARES: the one whose
    # normalisation gives the lowest mean prediction entropy on recent frames
    # (Adapter.choose_source_share). On in the stream preset: a fixed share that real frames
    # need costs the synthetic domains, where target statistics are all (docs/METHOD.md).
    choose_source_share: bool = False
    # What T's running statistics follow when they are "clean" or "frozen": "frame" (the whole
    # un-augmented frames) or "crop" (the un-rescaled crop x0, the extent the network adapts on).
    statistics_from: str = "frame"


PRESETS: dict[str, Preset] = {
    "paper": Preset("paper", importance="probability", im="entropy_diversity",
                    ps_reshape_quirk=False, weights=LossWeights(ia=0.2, im=0.5, ps=0.04, pe=2.0)),
    "released": Preset("released", importance="logit", im="entropy",
                       ps_reshape_quirk=True, weights=LossWeights(ia=0.2, im=2.0, ps=0.04, pe=0.5)),
    # The runtime's default: the paper's losses around a step that keeps what target
    # normalisation gives (clean statistics from the crop the step adapts on, half of them the
    # source's to start with, then the share chosen label-free, a teacher that uses them, the rare threshold scaled to the crop, a learning
    # rate that leaves the normalisation gain in place: 3e-5, classifier not faster than the
    # backbone). Each choice and its measured effect: docs/METHOD.md.
    "stream": Preset("stream", importance="probability", im="entropy_diversity",
                     ps_reshape_quirk=False, weights=LossWeights(ia=0.2, im=0.5, ps=0.04, pe=2.0),
                     bn_statistics="clean", teacher="memory", rare_fraction=1 / 32,
                     lr=3e-5, classifier_lr_mult=1.0, warmup_iters=20, ema_alpha=0.999,
                     schedule="constant", restore_probability=0.01,
                     source_statistics_weight=0.5, choose_source_share=True,
                     statistics_from="crop"),
}
BN_STATISTICS = ("augmented", "clean", "frozen")
# The source shares a label-free choice picks from (1 is left out: it would forget the target
# estimate the others are computed from).
SOURCE_SHARES = (0.0, 0.25, 0.5, 0.75)
STATISTICS_FROM = ("frame", "crop")
TEACHERS = ("source", "memory", "source_bn")


def get_preset(preset: str | Preset) -> Preset:
    """The :class:`Preset` called ``preset`` (a :class:`Preset` is returned unchanged)."""
    if isinstance(preset, Preset):
        if (preset.bn_statistics not in BN_STATISTICS or preset.teacher not in TEACHERS
                or preset.statistics_from not in STATISTICS_FROM):
            raise UserError(f"preset {preset.name!r}: bn_statistics must be one of {BN_STATISTICS}, "
                            f"teacher one of {TEACHERS} and statistics_from one of {STATISTICS_FROM}")
        return preset
    if preset not in PRESETS:
        raise UserError(f"unknown IAPC preset {preset!r}: choose one of {', '.join(sorted(PRESETS))}")
    return PRESETS[preset]


@dataclass
class AdaptConfig:
    """Everything one adaptation run depends on; saved beside every checkpoint (``to_dict``).

    ``schedule``: ``"poly"`` is the paper's warm-up then ``(1 - i/max_iters)^power`` decay, for
    a fixed number of iterations. ``"constant"`` keeps the same warm-up and then holds ``lr``,
    for streams that never end (poly decay would reach 0 at ``max_iters`` and stop adapting).
    ``amp_dtype``: ``"bf16"`` or ``"fp16"`` autocast for the forward passes (CUDA only); the
    losses are always computed in float32.
    """

    method: str = setting("iapc", "adaptation method", choices=METHOD_NAMES)
    preset: Any = setting("paper", "IAPC preset (docs/METHOD.md)", choices=tuple(PRESETS))
    lr: float | None = setting(None, "backbone learning rate (classifier: x classifier_lr_mult); "
                               "None: the preset's", above=0)
    classifier_lr_mult: float | None = setting(None, "classifier lr multiplier; None: the preset's",
                                               above=0, cli=False)
    momentum: float = setting(0.9, "SGD momentum", minimum=0, maximum=1, cli=False)
    weight_decay: float = setting(5e-4, "SGD weight decay", minimum=0, cli=False)
    nesterov: bool = setting(True, "Nesterov momentum", cli=False)
    warmup_iters: int | None = setting(None, "linear warm-up steps; None: the preset's", minimum=0)
    warmup_factor: float = setting(0.1, "lr fraction at step 0 of the warm-up", minimum=0,
                                   maximum=1, cli=False)
    max_iters: int = setting(100000, "poly-decay horizon", minimum=1)
    power: float = setting(0.9, "poly-decay power", above=0, cli=False)
    ema_alpha: float | None = setting(None, "EMA factor of the memory network; None: the preset's",
                                      minimum=0, maximum=1)
    crop: tuple[int, int] = setting((512, 256), "WIDTHxHEIGHT random crop (at most the frame)",
                                    minimum=1)
    scale_range: tuple[float, float] = setting((0.8, 1.2), "random rescale range", above=0, cli=False)
    class_balance: bool = setting(True, "class-balanced cross-entropy of the released code")
    amp_dtype: str | None = setting(None, "autocast dtype of the forwards (CUDA only)",
                                    choices=(None, *AMP_DTYPE_NAMES))
    channels_last: bool = setting(False, "channels_last memory format (GPU)", cli=False)
    schedule: str | None = setting(None, "lr schedule; None: the preset's",
                                   choices=(None, *SCHEDULES))
    bn_momentum: float | None = setting(
        None, "BatchNorm momentum of statistics that follow the target (stream preset, bn, tent); "
        "None: each layer's own (0.1), for bn a plain average of all frames", above=0, maximum=1)
    tent_lr: float = setting(1e-3, "Adam learning rate of the tent method", above=0)
    restore_probability: float | None = setting(
        None, "stochastic restore: chance per weight and step of returning to its source value; "
        "None: the preset's", minimum=0, maximum=1)
    source_statistics_weight: float | None = setting(
        None, "share of the source BatchNorm statistics kept where statistics follow the target "
        "(0: replaced, as BN-adapt); None: the preset's", minimum=0, maximum=1)
    choose_source_share: bool | None = setting(
        None, "choose the source share label-free (lowest prediction entropy on recent frames) "
        "before each export; None: the preset's")
    seed: int = setting(0, "seed of crops and augmentations", minimum=0)

    def __post_init__(self) -> None:
        self.crop = tuple(int(v) for v in self.crop)
        self.scale_range = tuple(float(v) for v in self.scale_range)
        get_preset(self.preset)
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise UserError(f"unknown schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        if self.amp_dtype is not None and self.amp_dtype not in AMP_DTYPE_NAMES:
            raise UserError(f"unknown amp_dtype {self.amp_dtype!r}: use 'bf16', 'fp16' or None")
        if len(self.crop) != 2 or min(self.crop) <= 0:
            raise UserError(f"crop {self.crop} is not a (width, height) of positive sizes: use e.g. 512x256")
        if self.ema_alpha is not None and not 0.0 <= self.ema_alpha <= 1.0:
            raise UserError(f"ema_alpha {self.ema_alpha} is outside [0, 1]: the paper uses 0.9999")
        if self.max_iters <= 0 or (self.warmup_iters is not None and self.warmup_iters < 0):
            raise UserError("max_iters must be positive and warmup_iters non-negative")

    @property
    def crop_hw(self) -> tuple[int, int]:
        """``crop`` as (height, width), the order tensors are indexed in."""
        return self.crop[1], self.crop[0]

    def resolved(self) -> "AdaptConfig":
        """This config with every ``None`` optimisation setting taken from the preset."""
        preset = get_preset(self.preset)
        missing = {name: getattr(preset, name)
                   for name in ("lr", "classifier_lr_mult", "warmup_iters", "ema_alpha", "schedule",
                                "restore_probability", "source_statistics_weight",
                                "choose_source_share")
                   if getattr(self, name) is None}
        return dataclasses.replace(self, **missing) if missing else self

    def fitted_to(self, width: int, height: int) -> "AdaptConfig":
        """The crop no larger than ``width`` x ``height`` frames."""
        crop = (min(self.crop[0], width), min(self.crop[1], height))
        return self if crop == self.crop else dataclasses.replace(self, crop=crop)

    def to_dict(self) -> dict[str, Any]:
        """The resolved settings as plain JSON/YAML values (tuples become lists)."""
        resolved = self.resolved()
        if not isinstance(resolved.preset, str):  # an ad-hoc Preset (benchmarks, ablations)
            return {**to_plain(dataclasses.replace(resolved, preset=resolved.preset.name)),
                    "preset_definition": dataclasses.asdict(resolved.preset)}
        return to_plain(resolved)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "method") -> "AdaptConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"preset_definition"})
        if unknown:
            raise UserError(f"unknown adaptation option(s) {', '.join(unknown)}: "
                            f"valid ones are {', '.join(sorted(known))}")
        values = {k: v for k, v in values.items() if k != "preset_definition"}
        return from_plain(cls, values, where)

    def check(self) -> None:
        check(self, "method")
