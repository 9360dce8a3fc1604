"""SynthVI cameras: what each camera of the SYSU-MM01, LLCM and RegDB layouts sees and how it records."""

from __future__ import annotations

from dataclasses import dataclass

from csdn.data.records import INFRARED, VISIBLE

VIEWS = ("front", "back", "side")


@dataclass(frozen=True)
class CameraSpec:
    """One camera of a layout: what it sees and how it records."""

    cam: int  # camera number as the dataset names it
    modality: str  # VISIBLE or INFRARED
    sensor: str  # "rgb", "thermal" (emission) or "nir" (near-infrared reflectance, active light)
    scene: str  # background style: "room", "corridor", "street" or "park"
    scene_seed: int  # variant of the background layout and palette
    light: tuple[float, float, float]  # RGB gain of the illumination (colour cast); ignored by IR
    exposure: tuple[float, float]  # range of the per-image exposure gain
    view_bias: tuple[float, float, float]  # probabilities of front / back / side views
    blur: float  # Gaussian blur sigma in output pixels
    noise: float  # sensor noise std (intensity 0..1)
    occlusion: float  # probability of a partial occluder in front of the person


def _rgb(
    cam: int,
    scene: str,
    light: tuple[float, float, float],
    exposure=(0.85, 1.1),
    view=(0.4, 0.4, 0.2),
    blur=0.0,
    noise=0.015,
    occlusion=0.15,
) -> CameraSpec:
    return CameraSpec(cam, VISIBLE, "rgb", scene, cam, light, exposure, view, blur, noise, occlusion)


def _ir(
    cam: int,
    scene: str,
    sensor: str = "thermal",
    exposure=(0.9, 1.1),
    view=(0.4, 0.4, 0.2),
    blur=1.0,
    noise=0.03,
    occlusion=0.15,
) -> CameraSpec:
    return CameraSpec(cam, INFRARED, sensor, scene, cam, (1.0, 1.0, 1.0), exposure, view, blur, noise, occlusion)


# SYSU-MM01: visible 1, 2 (indoor, warm light), 4, 5 (outdoor); infrared 3 (indoor), 6 (outdoor).
SYSU_CAMERAS: tuple[CameraSpec, ...] = (
    _rgb(1, "room", (1.12, 0.98, 0.78), view=(0.5, 0.3, 0.2)),
    _rgb(2, "corridor", (1.08, 1.0, 0.85), exposure=(0.7, 0.95), view=(0.3, 0.5, 0.2)),
    _ir(3, "room", blur=0.9, noise=0.025),
    _rgb(4, "street", (0.95, 1.0, 1.08), exposure=(0.95, 1.25), view=(0.3, 0.3, 0.4), blur=0.4, occlusion=0.25),
    _rgb(5, "park", (1.02, 1.02, 0.98), exposure=(0.9, 1.2), view=(0.35, 0.35, 0.3), blur=0.3),
    _ir(6, "street", blur=1.3, noise=0.035, view=(0.3, 0.3, 0.4), occlusion=0.25),
)

# LLCM: 9 camera positions, each seen by day (visible) and by night (near-infrared, no NIR camera 3).
LLCM_NIR_CAMS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 8, 9)
_LLCM_SCENES = ("street", "park", "corridor", "street", "room", "park", "street", "corridor", "park")
LLCM_CAMERAS: tuple[CameraSpec, ...] = tuple(
    [
        CameraSpec(
            c,
            VISIBLE,
            "rgb",
            s,
            100 + c,
            (1.0 + 0.04 * (c % 3), 1.0, 1.04 - 0.04 * (c % 2)),
            (0.45, 1.0),
            (0.35, 0.35, 0.3),
            0.5,
            0.03,
            0.2,
        )
        for c, s in enumerate(_LLCM_SCENES, 1)
    ]
    + [
        CameraSpec(c, INFRARED, "nir", s, 100 + c, (1.0, 1.0, 1.0), (0.8, 1.1), (0.35, 0.35, 0.3), 0.8, 0.04, 0.2)
        for c, s in enumerate(_LLCM_SCENES, 1)
        if c in LLCM_NIR_CAMS
    ]
)

# RegDB: one co-located visible / thermal camera pair, outdoors.
REGDB_CAMERAS: tuple[CameraSpec, ...] = (
    CameraSpec(1, VISIBLE, "rgb", "street", 200, (1.0, 1.0, 1.02), (0.8, 1.2), (0.45, 0.45, 0.1), 0.6, 0.02, 0.05),
    CameraSpec(2, INFRARED, "thermal", "street", 200, (1.0, 1.0, 1.0), (0.9, 1.1), (0.45, 0.45, 0.1), 1.4, 0.04, 0.05),
)

ALL_CAMERAS: tuple[CameraSpec, ...] = SYSU_CAMERAS + LLCM_CAMERAS + REGDB_CAMERAS
