"""Domain styles: what makes each synthetic domain look the way it does.

``DOMAINS`` holds the labelled ``source`` domain (clear day, flat game-like look) and the targets
``city``, ``night``, ``fog`` and ``rain``, which differ from the source in texture, noise,
contrast, depth-dependent effects and class frequencies, not only in global colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from iapc.errors import UserError
from iapc.labels import NAME_TO_ID

BGR = tuple[int, int, int]

# Cityscapes label ids by name; never retyped, always looked up in cityscapesscripts' table.
ID: dict[str, int] = {name: NAME_TO_ID[name] for name in (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "motorcycle",
    "bicycle", "ego vehicle")}
GROUND_CLASSES = ("road", "sidewalk", "terrain")  # surfaces that receive cast shadows


@dataclass(frozen=True)
class DomainStyle:
    """Everything that makes one domain look the way it does.

    Lengths are in metres, blur and streak sizes in fractions of the image width (so a domain
    looks the same at every resolution), intensities in 0..255 units.
    """

    city: str  # city name used in the Cityscapes file names, e.g. "synthsource"
    # --- object appearance
    palette: dict[str, BGR]  # base colour per class name (plus "window", "marking", "sky_top")
    car_colors: tuple[BGR, ...]  # body colours of vehicles
    clothes_colors: tuple[BGR, ...]  # clothes of persons and riders
    color_jitter: float = 0.08  # per-instance multiplicative colour variation
    scene_jitter: float = 0.1  # per-scene, per-class variation of the palette (B, G, R apart)
    # --- texture: class -> (fine grain, low-frequency blotch) amplitude in intensity units
    texture: dict[str, tuple[float, float]] = field(default_factory=dict)
    window_lit: float = 0.0  # probability a window glows (night)
    # --- lighting
    sun_elevation: float = 45.0  # degrees; shadows get longer as it drops
    shadow_strength: float = 0.0  # 0 = no cast shadows, 0.6 = dark hard shadows
    shadow_softness: float = 0.004  # shadow edge blur, fraction of width
    face_shading: float = 0.25  # how much darker faces turned away from the sun are
    gain: float = 1.0  # global illumination
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # B, G, R multipliers
    contrast: float = 1.0  # around mid grey
    saturation: float = 1.0
    gamma: float = 1.0  # applied last, on 0..1 intensities
    vignette: float = 0.0  # corner darkening
    lamp_glow: float = 0.0  # street lamps, headlights and lit windows glow (night)
    # --- weather
    fog_density: float = 0.0  # 1/m; transmittance exp(-density * depth)
    fog_color: BGR = (200, 200, 200)
    rain_streaks: float = 0.0  # streaks per 1000 pixels
    rain_length: float = 0.03  # streak length, fraction of width
    wet_road: float = 0.0  # strength of the mirrored reflection on the road
    # --- optics and sensor
    motion_blur: float = 0.0  # radial zoom blur from forward motion, fraction of width
    defocus: float = 0.0  # Gaussian blur sigma, fraction of width
    noise_sigma: float = 0.0  # read noise (Gaussian), intensity units
    shot_noise: float = 0.0  # signal-dependent noise: sigma = shot_noise * sqrt(intensity)
    jpeg_quality: int = 0  # 0 = none, else re-encode with this JPEG quality (blockiness)
    ego_hood: float = 0.0  # height of the ego vehicle's bonnet, fraction of image height
    # --- scene statistics: expected count per 100 m of road
    rates: dict[str, float] = field(default_factory=dict)
    vegetation_share: float = 0.3  # chance a roadside block is vegetation instead of buildings
    wall_fence_share: float = 0.15  # chance a roadside block is fronted by a wall or fence
    building_height: tuple[float, float] = (8.0, 24.0)
    camera_height: tuple[float, float] = (1.3, 1.7)
    horizon: tuple[float, float] = (0.40, 0.48)  # horizon row, fraction of image height
    focal: tuple[float, float] = (0.9, 1.2)  # focal length, fraction of width
    curvature: float = 0.0015  # max |road curvature| (1/m)
    lanes: tuple[int, ...] = (2, 3, 4)
    sidewalk_width: tuple[float, float] = (2.0, 4.0)
    speed: tuple[float, float] = (6.0, 13.0)  # camera speed, m/s


_SOURCE = DomainStyle(
    city="synthsource",
    # clean, saturated, flat game-like colours
    palette={
        "sky": (240, 190, 110), "sky_top": (220, 150, 60), "road": (110, 104, 104),
        "marking": (235, 240, 240), "sidewalk": (175, 170, 185), "terrain": (80, 190, 140),
        "building": (110, 150, 205), "window": (210, 170, 110), "wall": (150, 170, 190),
        "fence": (60, 110, 150), "pole": (90, 90, 95), "traffic light": (40, 50, 40),
        "traffic sign": (40, 40, 220), "vegetation": (50, 170, 60), "skin": (150, 185, 230),
        "tyre": (30, 30, 30), "glass": (120, 80, 50), "ego vehicle": (40, 40, 40),
    },
    car_colors=((40, 40, 220), (220, 90, 30), (40, 200, 240), (230, 230, 230), (60, 170, 40),
                (200, 60, 200), (20, 20, 20)),
    clothes_colors=((200, 60, 40), (40, 40, 200), (40, 180, 230), (60, 160, 60), (230, 230, 230)),
    # every scene repaints each class (hue and brightness) so that a model trained here must
    # learn shapes and context, not one colour per class
    color_jitter=0.15, scene_jitter=0.25,
    # light, regular textures and a clean sensor (rendered-game look)
    texture={"road": (4.0, 5.0), "sidewalk": (3.0, 5.0), "building": (3.0, 5.0),
             "vegetation": (8.0, 8.0), "terrain": (5.0, 6.0), "car": (2.0, 2.0)},
    sun_elevation=50.0, shadow_strength=0.5, shadow_softness=0.0015, noise_sigma=1.5,
    rates={"car": 9.0, "parked": 6.0, "truck": 1.0, "bus": 0.6, "person": 2.0, "rider": 0.6,
           "pole": 5.0, "tree": 3.0},
    vegetation_share=0.25,
)

DOMAINS: dict[str, DomainStyle] = {
    "source": _SOURCE,
    # real-looking: muted palette, strong fine textures, soft shadows, optics and sensor effects,
    # lower camera, busier sidewalks and more greenery
    "city": replace(
        _SOURCE, city="synthcity",
        palette={**_SOURCE.palette,
                 "sky": (225, 222, 215), "sky_top": (200, 185, 170), "road": (88, 90, 92),
                 "marking": (190, 200, 205), "sidewalk": (130, 140, 150),
                 "terrain": (70, 130, 120), "building": (120, 130, 150), "window": (70, 65, 60),
                 "wall": (135, 140, 150), "fence": (90, 100, 100), "pole": (110, 110, 105),
                 "traffic sign": (160, 90, 40), "vegetation": (50, 95, 60),
                 "glass": (60, 55, 50)},
        car_colors=((40, 40, 40), (180, 180, 180), (220, 220, 220), (90, 60, 40), (60, 60, 120),
                    (120, 120, 115)),
        clothes_colors=((40, 40, 40), (90, 70, 60), (120, 120, 120), (60, 60, 100)),
        color_jitter=0.15,
        texture={"road": (7.0, 8.0), "sidewalk": (6.0, 9.0), "building": (8.0, 11.0),
                 "vegetation": (16.0, 13.0), "terrain": (10.0, 10.0), "sky": (2.0, 8.0),
                 "wall": (6.0, 8.0), "car": (3.0, 3.0), "person": (4.0, 3.0)},
        sun_elevation=35.0, shadow_strength=0.3, shadow_softness=0.008, face_shading=0.15,
        saturation=0.75, contrast=0.9, vignette=0.35, defocus=0.0018, motion_blur=0.004,
        noise_sigma=2.5, shot_noise=0.35, jpeg_quality=75, ego_hood=0.12,
        rates={"car": 5.0, "parked": 9.0, "truck": 0.5, "bus": 0.5, "person": 12.0,
               "rider": 3.0, "pole": 8.0, "tree": 7.0},
        vegetation_share=0.45, wall_fence_share=0.3, camera_height=(1.1, 1.4),
        horizon=(0.36, 0.44), focal=(1.0, 1.3), lanes=(2, 2, 3), sidewalk_width=(3.0, 5.0),
    ),
    # dark and noisy, lit by street lamps, headlights and windows; few pedestrians
    "night": replace(
        _SOURCE, city="synthnight",
        palette={**_SOURCE.palette,
                 "sky": (40, 25, 20), "sky_top": (20, 10, 5), "road": (70, 70, 75),
                 "sidewalk": (100, 105, 110), "building": (90, 100, 120), "window": (40, 40, 40),
                 "vegetation": (40, 80, 45), "terrain": (45, 80, 70), "glass": (30, 30, 30)},
        car_colors=((40, 40, 40), (150, 150, 150), (200, 200, 200), (40, 40, 120), (100, 50, 30)),
        texture={"road": (6.0, 8.0), "sidewalk": (5.0, 8.0), "building": (6.0, 10.0),
                 "vegetation": (10.0, 10.0)},
        window_lit=0.35, shadow_strength=0.0, face_shading=0.0, gain=0.5,
        tint=(1.15, 1.0, 0.9), saturation=0.6, gamma=1.15, lamp_glow=1.0, vignette=0.3,
        motion_blur=0.012, noise_sigma=5.0, shot_noise=1.2, jpeg_quality=60,
        rates={"car": 3.0, "parked": 2.5, "truck": 1.2, "bus": 0.3, "person": 0.8, "rider": 0.3,
               "pole": 9.0, "tree": 2.0},
        vegetation_share=0.2,
    ),
    # depth fog: far objects fade into a bright veil, low contrast, no shadows, sparse traffic
    "fog": replace(
        _SOURCE, city="synthfog",
        palette={**_SOURCE.palette,
                 "sky": (205, 205, 200), "sky_top": (195, 195, 190), "road": (95, 95, 95),
                 "vegetation": (60, 110, 70), "terrain": (90, 140, 120),
                 "building": (130, 135, 145)},
        texture={"road": (4.0, 6.0), "sidewalk": (4.0, 6.0), "vegetation": (8.0, 8.0),
                 "building": (4.0, 6.0)},
        shadow_strength=0.0, face_shading=0.1, saturation=0.6, contrast=0.9,
        fog_density=0.022, fog_color=(205, 205, 200), defocus=0.002, noise_sigma=2.0,
        rates={"car": 5.0, "parked": 5.0, "truck": 1.5, "bus": 0.8, "person": 1.5, "rider": 0.2,
               "pole": 6.0, "tree": 4.0},
        vegetation_share=0.4,
    ),
    # rain: dark wet road mirroring the scene, streaks, blur, overcast; more trucks and buses
    "rain": replace(
        _SOURCE, city="synthrain",
        palette={**_SOURCE.palette,
                 "sky": (170, 165, 160), "sky_top": (130, 125, 120), "road": (60, 60, 62),
                 "sidewalk": (105, 105, 110), "building": (100, 110, 125),
                 "vegetation": (45, 90, 50), "terrain": (60, 100, 90)},
        car_colors=((40, 40, 40), (150, 150, 150), (200, 200, 200), (40, 40, 160),
                    (120, 70, 40)),
        clothes_colors=((40, 40, 40), (60, 60, 60), (30, 120, 200), (120, 40, 40)),
        texture={"road": (3.0, 8.0), "sidewalk": (5.0, 8.0), "vegetation": (10.0, 10.0),
                 "building": (5.0, 8.0)},
        shadow_strength=0.0, face_shading=0.05, gain=0.8, saturation=0.7, contrast=0.8,
        fog_density=0.008, fog_color=(160, 160, 160), rain_streaks=3.0, rain_length=0.05,
        wet_road=0.45, motion_blur=0.008, defocus=0.0015, noise_sigma=3.0, shot_noise=0.5,
        rates={"car": 8.0, "parked": 4.0, "truck": 2.5, "bus": 1.5, "person": 0.6, "rider": 0.2,
               "pole": 5.0, "tree": 3.0},
    ),
}


def get_domain(name: str) -> DomainStyle:
    """The style of domain ``name``; a :class:`UserError` lists the known ones otherwise."""
    if name not in DOMAINS:
        raise UserError(f"unknown synthetic domain {name!r}: choose one of {', '.join(DOMAINS)}")
    return DOMAINS[name]
