"""SynthVI drawing: cameras, background scenes and pedestrian crops (numpy + PIL).

A person is first drawn as a *material map* (skin, hair, top, pattern, bottom, shoes, bag, hat,
occluder) at twice the output resolution. A visible camera maps materials to the identity's colours
under the camera's light; an infrared camera maps them to colour-free intensities (thermal emission, or
near-infrared reflectance for night cameras). Colour therefore cannot reach an infrared image: the same
random stream gives the same infrared pixels whatever the identity's colours are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from csdn.data.records import VISIBLE
from csdn.synthvi.cameras import VIEWS, CameraSpec
from csdn.synthvi.world import Identity

SUPERSAMPLE = 2  # drawing resolution factor (anti-aliasing by box downsampling)

# Material ids of the person map; names index the identity's thermal / nir tables.
BG, SKIN, HAIR, TOP, PATTERN, BOTTOM, SHOES, BAG, HAT, OCCLUDER = range(10)
MATERIALS = ("background", "skin", "hair", "top", "pattern", "bottom", "shoes", "bag", "hat", "occluder")

# Named colours of the vocabulary (linear-ish RGB in 0..1).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.78, 0.1, 0.1),
    "blue": (0.12, 0.24, 0.72),
    "green": (0.12, 0.52, 0.2),
    "yellow": (0.92, 0.82, 0.15),
    "white": (0.93, 0.93, 0.91),
    "black": (0.07, 0.07, 0.08),
    "gray": (0.48, 0.48, 0.5),
    "purple": (0.45, 0.16, 0.58),
    "brown": (0.42, 0.26, 0.13),
}

# ----------------------------------------------------------------------------------------------------
# Background scenes: a wide material map per camera, coloured by the sensor; each image crops it.

# Scene material -> (RGB, thermal intensity, NIR reflectance).
_SCENE_PALETTE: dict[str, tuple[tuple[float, float, float], float, float]] = {
    "wall": ((0.78, 0.72, 0.62), 0.42, 0.55),
    "wall2": ((0.62, 0.66, 0.7), 0.4, 0.5),
    "floor": ((0.45, 0.4, 0.36), 0.38, 0.35),
    "door": ((0.35, 0.24, 0.16), 0.36, 0.3),
    "window": ((0.85, 0.9, 0.95), 0.25, 0.8),
    "poster": ((0.7, 0.3, 0.25), 0.43, 0.6),
    "sky": ((0.7, 0.82, 0.95), 0.05, 0.15),
    "building": ((0.6, 0.55, 0.5), 0.45, 0.45),
    "road": ((0.3, 0.3, 0.32), 0.5, 0.2),
    "pavement": ((0.58, 0.56, 0.53), 0.48, 0.4),
    "grass": ((0.3, 0.5, 0.22), 0.32, 0.6),
    "tree": ((0.18, 0.35, 0.15), 0.28, 0.55),
    "trunk": ((0.3, 0.22, 0.14), 0.35, 0.3),
}
_SCENE_NAMES = tuple(_SCENE_PALETTE)
_OCCLUDER_LOOK = {
    "room": ((0.5, 0.4, 0.3), 0.35, 0.4),
    "corridor": ((0.55, 0.55, 0.58), 0.33, 0.45),
    "street": ((0.35, 0.36, 0.4), 0.4, 0.35),
    "park": ((0.4, 0.3, 0.2), 0.3, 0.4),
}


def _draw_scene(style: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Material ids (indices into ``_SCENE_NAMES``) of a background ``h`` x ``w``."""
    m = {name: i for i, name in enumerate(_SCENE_NAMES)}
    img = Image.new("L", (w, h), m["wall"])
    d = ImageDraw.Draw(img)
    horizon = int(h * rng.uniform(0.55, 0.72))
    if style == "room":
        d.rectangle([0, horizon, w, h], fill=m["floor"])
        for _ in range(int(rng.integers(2, 4))):
            x0 = rng.uniform(0, w * 0.9)
            kind = str(rng.choice(["door", "window", "poster"]))
            top = h * (0.12 if kind == "door" else rng.uniform(0.1, 0.3))
            bottom = horizon if kind == "door" else top + h * rng.uniform(0.15, 0.25)
            d.rectangle([x0, top, x0 + w * rng.uniform(0.08, 0.18), bottom], fill=m[kind])
    elif style == "corridor":
        d.rectangle([0, 0, w, h * 0.12], fill=m["wall2"])
        d.polygon([(0, h), (w, h), (w * 0.65, horizon), (w * 0.35, horizon)], fill=m["floor"])
        d.polygon([(0, h), (w * 0.35, horizon), (0, horizon)], fill=m["floor"])
        d.polygon([(w, h), (w * 0.65, horizon), (w, horizon)], fill=m["floor"])
        for x0 in np.arange(rng.uniform(0, w * 0.3), w, w * rng.uniform(0.25, 0.4)):
            d.rectangle([x0, h * 0.12, x0 + w * 0.05, horizon], fill=m["wall2"])
    elif style == "street":
        d.rectangle([0, 0, w, horizon], fill=m["building"])
        d.rectangle([0, 0, w, h * rng.uniform(0.0, 0.12)], fill=m["sky"])
        step = w * rng.uniform(0.12, 0.2)
        for x0 in np.arange(rng.uniform(0, step), w, step):
            for y0 in np.arange(h * 0.15, horizon - h * 0.12, h * 0.16):
                d.rectangle([x0, y0, x0 + step * 0.45, y0 + h * 0.08], fill=m["window"])
        d.rectangle([0, horizon, w, h], fill=m["pavement"])
        d.rectangle([0, h * 0.9, w, h], fill=m["road"])
    elif style == "park":
        d.rectangle([0, 0, w, horizon], fill=m["sky"])
        d.rectangle([0, horizon - h * 0.2, w, horizon], fill=m["grass"])
        for _ in range(int(rng.integers(3, 6))):
            x0, r = rng.uniform(0, w), h * rng.uniform(0.1, 0.18)
            d.rectangle([x0 - r * 0.12, horizon - r * 1.6, x0 + r * 0.12, horizon], fill=m["trunk"])
            d.ellipse([x0 - r, horizon - r * 2.8, x0 + r, horizon - r * 0.9], fill=m["tree"])
        d.rectangle([0, horizon, w, h], fill=m["grass"])
        d.polygon([(w * 0.1, h), (w * 0.9, h), (w * 0.6, horizon), (w * 0.4, horizon)], fill=m["pavement"])
    else:
        raise ValueError(f"unknown scene style {style!r}; expected room, corridor, street or park")
    return np.asarray(img)


@lru_cache(maxsize=64)
def _scene(camera: CameraSpec, h: int, w: int) -> np.ndarray:
    """The camera's background, 2x wider than an image: (h, 2w, 3) RGB or (h, 2w) intensity, float32."""
    rng = np.random.default_rng([camera.scene_seed, 7])
    ids = _draw_scene(camera.scene, rng, h, 2 * w)
    jitter = rng.uniform(0.85, 1.15, size=(len(_SCENE_NAMES), 1)) * rng.uniform(0.95, 1.05, size=(len(_SCENE_NAMES), 3))
    if camera.sensor == "rgb":
        table = np.array([_SCENE_PALETTE[n][0] for n in _SCENE_NAMES]) * jitter
    else:
        col = 1 if camera.sensor == "thermal" else 2
        table = np.array([_SCENE_PALETTE[n][col] for n in _SCENE_NAMES]) * jitter[:, 0]
        # thermal: the scene is mostly cooler than a body; nir: far things get little active light
        table = table * (0.8 if camera.sensor == "thermal" else 0.45)
    coarse = rng.normal(0, 1, size=(max(2, h // 12), max(2, w // 6))).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse, mode="F").resize((2 * w, h), Image.BILINEAR))
    texture = 1.0 + 0.06 * texture + rng.normal(0, 0.02, size=(h, 2 * w))
    out = table[ids] * (texture[..., None] if table.ndim == 2 else texture)
    return np.clip(out, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# The person


@dataclass(frozen=True)
class _Pose:
    view: str  # front, back or side
    cx: float  # horizontal centre of the body (pixels of the drawing canvas)
    top: float  # y of the top of the head
    ph: float  # person height in pixels
    stride: float  # foot spread (fraction of person height)
    swing: float  # arm swing (fraction of person height)
    flip: bool  # mirror the person horizontally


def _sample_pose(rng: np.random.Generator, ident: Identity, camera: CameraSpec, hs: int, ws: int) -> _Pose:
    view = VIEWS[int(rng.choice(3, p=np.asarray(camera.view_bias) / sum(camera.view_bias)))]
    ph = hs * ident.params.figure * rng.uniform(0.92, 1.05)
    foot = hs * rng.uniform(0.96, 1.0)
    return _Pose(
        view=view,
        cx=ws * (0.5 + rng.normal(0, 0.05)),
        top=foot - ph,
        ph=ph,
        stride=float(rng.uniform(0.0, 0.09 if view == "side" else 0.04)),
        swing=float(rng.uniform(-0.06, 0.06)),
        flip=bool(rng.random() < 0.5),
    )


def _quad(d: ImageDraw.ImageDraw, x0: float, y0: float, w0: float, x1: float, y1: float, w1: float, fill: int) -> None:
    """A limb segment from (x0, y0) with half-width w0 to (x1, y1) with half-width w1."""
    d.polygon([(x0 - w0, y0), (x0 + w0, y0), (x1 + w1, y1), (x1 - w1, y1)], fill=fill)


def _draw_legs(d: ImageDraw.ImageDraw, a: dict[str, str], p, pose: _Pose, y) -> None:
    ph, cx, side = pose.ph, pose.cx, pose.view == "side"
    hw = p.hip * ph * (0.65 if side else 1.0)
    tw, aw = hw * 0.5 * p.limb, hw * 0.26 * p.limb  # thigh and ankle half-widths
    spread = pose.stride * ph
    if side:
        legs = [(cx, cx - spread), (cx, cx + spread)]
    else:
        legs = [(cx - hw * 0.5, cx - hw * 0.45 - spread), (cx + hw * 0.5, cx + hw * 0.45 + spread)]
    y_hip, y_knee, y_ankle = y(0.5), y(0.7), y(0.955)
    for xh, xf in legs:
        fill = BOTTOM if a["bottom_type"] == "trousers" else SKIN
        _quad(d, xh, y_hip, tw, xf, y_ankle, aw, fill)
        if a["bottom_type"] == "shorts":
            xk = xh + (xf - xh) * 0.45
            _quad(d, xh, y_hip, tw * 1.05, xk, y_knee - 0.03 * ph, tw * 0.95, BOTTOM)
        toe = aw * 1.8 if side else aw * 0.4
        d.ellipse([xf - aw * 1.3, y_ankle - 0.015 * ph, xf + aw * 1.2 + toe, y(1.0)], fill=SHOES)
    if a["bottom_type"] == "skirt":
        flare = hw * (1.0 if side else 1.45) + spread * 0.5
        d.polygon(
            [(cx - hw * 0.95, y(0.46)), (cx + hw * 0.95, y(0.46)), (cx + flare, y(0.67)), (cx - flare, y(0.67))],
            fill=BOTTOM,
        )
    else:
        d.rectangle([cx - hw, y(0.47), cx + hw, y(0.56)], fill=BOTTOM)


def _draw_arm(d: ImageDraw.ImageDraw, a: dict[str, str], p, ph: float, x_sh: float, x_hand: float, y) -> None:
    w = 0.032 * ph * p.limb
    y_sh, y_wrist = y(0.17), y(0.5)
    if a["sleeve"] == "long":
        _quad(d, x_sh, y_sh, w, x_hand, y_wrist, w * 0.75, TOP)
    else:
        _quad(d, x_sh, y_sh, w * 0.85, x_hand, y_wrist, w * 0.65, SKIN)
        x_el = x_sh + (x_hand - x_sh) * 0.35
        _quad(d, x_sh, y_sh, w * 1.05, x_el, y(0.29), w * 1.0, TOP)
    d.ellipse([x_hand - w * 0.8, y_wrist - w * 0.3, x_hand + w * 0.8, y_wrist + w * 1.5], fill=SKIN)


def _draw_torso(d: ImageDraw.ImageDraw, p, pose: _Pose, y) -> tuple[float, float]:
    """The top garment's body; returns the shoulder and hip half-widths used."""
    ph, cx = pose.ph, pose.cx
    k = 0.6 if pose.view == "side" else 1.0
    sw, hw = p.shoulder * ph * k, p.hip * ph * k * 1.04
    waist = 0.5 * (sw + hw) * (0.92 + 0.06 * p.limb)
    d.polygon(
        [
            (cx - sw * 0.8, y(0.155)),
            (cx + sw * 0.8, y(0.155)),
            (cx + sw, y(0.19)),
            (cx + waist, y(0.4)),
            (cx + hw, y(0.53)),
            (cx - hw, y(0.53)),
            (cx - waist, y(0.4)),
            (cx - sw, y(0.19)),
        ],
        fill=TOP,
    )
    return sw, hw


def _draw_head(d: ImageDraw.ImageDraw, a: dict[str, str], p, pose: _Pose, y) -> None:
    ph, cx, view = pose.ph, pose.cx, pose.view
    hh, hw = p.head * ph, p.head * ph * 0.78  # head half-height, half-width
    cy = pose.top + hh
    box = [cx - hw, cy - hh, cx + hw, cy + hh]
    d.rectangle([cx - hw * 0.45, cy, cx + hw * 0.45, y(0.17)], fill=SKIN)  # neck
    long_hair = a["hair"] == "long"
    hair_low = y(0.25 + 0.07 * p.hair_volume)
    if long_hair and view != "back":  # hair falling behind the head
        back = cx - hw * 1.05 if view == "side" else cx - hw * 1.12
        d.polygon(
            [
                (back, cy - hh * 0.2),
                (cx + hw * (0.3 if view == "side" else 1.12), cy - hh * 0.2),
                (cx + hw * (0.2 if view == "side" else 1.2), hair_low),
                (back - hw * 0.2, hair_low),
            ],
            fill=HAIR,
        )
    if view == "back":
        d.ellipse(box, fill=HAIR)
        if long_hair:
            d.polygon(
                [(cx - hw * 1.1, cy), (cx + hw * 1.1, cy), (cx + hw * 1.25, hair_low), (cx - hw * 1.25, hair_low)],
                fill=HAIR,
            )
    else:
        d.ellipse(box, fill=SKIN)
        grow = 1.06 + 0.06 * p.hair_volume
        hair_box = [cx - hw * grow, cy - hh * grow, cx + hw * grow, cy + hh * grow]
        d.chord(hair_box, 180 + 22, 360 - 22, fill=HAIR)
        if view == "side":
            d.pieslice(hair_box, 100, 260, fill=HAIR)
    if a["hat"] == "cap":
        cap = [cx - hw * 1.1, cy - hh * 1.12, cx + hw * 1.1, cy + hh * 1.0]
        d.chord(cap, 180 + 10, 360 - 10, fill=HAT)
        if view == "side":
            d.rectangle([cx, cy - hh * 0.25, cx + hw * 1.7, cy - hh * 0.12], fill=HAT)
        elif view == "front":
            d.rectangle([cx - hw * 1.05, cy - hh * 0.3, cx + hw * 1.05, cy - hh * 0.15], fill=HAT)


def _draw_person(ident: Identity, pose: _Pose, hs: int, ws: int) -> np.ndarray:
    """The material map (uint8, hs x ws) of one pedestrian."""
    a, p = ident.attributes, ident.params
    ph, cx, view = pose.ph, pose.cx, pose.view
    img = Image.new("L", (ws, hs), BG)
    d = ImageDraw.Draw(img)

    def y(f: float) -> float:
        return pose.top + f * ph

    swing = pose.swing * ph
    if view == "side":
        _draw_arm(d, a, p, ph, cx, cx - swing, y)  # far arm, behind the body
    _draw_legs(d, a, p, pose, y)
    sw, hw = _draw_torso(d, p, pose, y)
    bag_w, bag = p.bag_size * sw, a["bag"]
    if bag == "backpack":
        if view == "back":
            d.rounded_rectangle([cx - bag_w * 0.78, y(0.19), cx + bag_w * 0.78, y(0.44)], radius=bag_w * 0.2, fill=BAG)
        elif view == "side":
            d.rounded_rectangle([cx - sw - bag_w * 0.8, y(0.18), cx - sw * 0.7, y(0.43)], radius=bag_w * 0.2, fill=BAG)
        else:
            for s in (-1, 1):  # shoulder straps
                x = cx + s * sw * 0.62
                d.rectangle([x - 0.012 * ph, y(0.16), x + 0.012 * ph, y(0.37)], fill=BAG)
    if view == "side":
        _draw_arm(d, a, p, ph, cx, cx + swing, y)
    else:
        for s in (-1, 1):
            x_sh = cx + s * (sw - 0.028 * ph)
            _draw_arm(d, a, p, ph, x_sh, x_sh + s * 0.02 * ph + s * swing * 0.3, y)
    if bag == "handbag":
        bx = cx if view == "side" else cx + p.bag_side * (sw + 0.02 * ph)
        if view == "front":
            d.line([(cx - p.bag_side * sw * 0.5, y(0.16)), (bx, y(0.46))], fill=BAG, width=max(1, int(0.012 * ph)))
        d.rounded_rectangle(
            [bx - 0.055 * ph * p.bag_size, y(0.45), bx + 0.055 * ph * p.bag_size, y(0.58)], radius=0.012 * ph, fill=BAG
        )
    _draw_head(d, a, p, pose, y)
    return np.asarray(img)


def _add_pattern(mat: np.ndarray, pattern: str, pose: _Pose, period: float) -> np.ndarray:
    """Turn part of the top garment into the PATTERN material (stripes or checks)."""
    if pattern == "plain":
        return mat
    step = max(2.0, period * pose.ph)
    rows = ((np.arange(mat.shape[0]) - pose.top) // step).astype(np.int64)
    if pattern == "striped":
        band = (rows % 2 == 1)[:, None]
    else:
        cols = ((np.arange(mat.shape[1]) - pose.cx) // step).astype(np.int64)
        band = (rows[:, None] + cols[None, :]) % 2 == 1
    out = mat.copy()
    out[(mat == TOP) & band] = PATTERN
    return out


def _add_occluder(mat: np.ndarray, rng: np.random.Generator, camera: CameraSpec) -> np.ndarray:
    if rng.random() >= camera.occlusion:
        return mat
    h, w = mat.shape
    out = mat.copy()
    if rng.random() < 0.5:  # something low in front: bench, railing, car bonnet
        out[int(h * rng.uniform(0.72, 0.88)) :, :] = OCCLUDER
    else:  # a pillar or passer-by at one side
        width = int(w * rng.uniform(0.18, 0.32))
        if rng.random() < 0.5:
            out[:, :width] = OCCLUDER
        else:
            out[:, w - width :] = OCCLUDER
    return out


# ----------------------------------------------------------------------------------------------------
# Sensors


def _visible_table(ident: Identity, camera: CameraSpec) -> np.ndarray:
    a, p = ident.attributes, ident.params
    table = np.zeros((len(MATERIALS), 3), dtype=np.float32)

    def named(attr: str) -> np.ndarray:
        return np.clip(np.asarray(COLORS[a[attr]]) * np.asarray(p.color_gain[attr]), 0, 1)

    table[SKIN], table[HAIR], table[HAT] = p.skin_rgb, p.hair_rgb, p.hat_rgb
    table[TOP], table[BOTTOM], table[SHOES] = named("top_color"), named("bottom_color"), named("shoes_color")
    table[PATTERN] = table[TOP] * 0.35 + (0.6 if p.pattern_light else 0.0)
    if a["bag"] != "none":
        table[BAG] = named("bag_color")
    table[OCCLUDER] = _OCCLUDER_LOOK[camera.scene][0]
    return table


def _infrared_table(ident: Identity, camera: CameraSpec, rng: np.random.Generator) -> np.ndarray:
    values = ident.params.thermal if camera.sensor == "thermal" else ident.params.nir
    table = np.zeros(len(MATERIALS), dtype=np.float32)
    for i, name in enumerate(MATERIALS[1:-1], start=1):
        table[i] = values[name]
    body = rng.normal(0, 0.025)  # body temperature / distance to the illuminator of this image
    table[1:-1] += body
    table[OCCLUDER] = _OCCLUDER_LOOK[camera.scene][1 if camera.sensor == "thermal" else 2]
    return table


@lru_cache(maxsize=16)
def _grid(hs: int, ws: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:hs, 0:ws].astype(np.float32)


def _shading(mat: np.ndarray, pose: _Pose, p, strength: float) -> np.ndarray:
    """Per-pixel gain: cylindrical body shading on the person, 1 on occluders, 0 on the background."""
    yy, xx = _grid(*mat.shape)
    cx = mat.shape[1] - 1 - pose.cx if pose.flip else pose.cx
    half = max(1.0, p.shoulder * pose.ph * 1.3)
    shade = 1.0 - strength * np.minimum(((xx - cx) / half) ** 2, 1.0) - (0.08 * strength / pose.ph) * (yy - pose.top)
    shade[mat == OCCLUDER] = 1.0
    shade[mat == BG] = 0.0
    return shade


def _downsample(img: np.ndarray) -> np.ndarray:
    """Box-filter the SUPERSAMPLE x SUPERSAMPLE drawing canvas down to the output size."""
    s = SUPERSAMPLE
    out = sum(img[i::s, j::s] for i in range(s) for j in range(s))
    return out * np.float32(1.0 / (s * s))


def render_image(
    identity: Identity, camera: CameraSpec, rng: np.random.Generator, height: int = 128, width: int = 64
) -> np.ndarray:
    """One pedestrian crop of ``identity`` seen by ``camera``: uint8 (height, width, 3).

    Pose (front/back/side view, stride, arm swing, mirror), scale, position, occlusion, background
    crop, exposure and noise come from ``rng``. Infrared images are grayscale in 3 channels and
    independent of the identity's colours.
    """
    hs, ws = height * SUPERSAMPLE, width * SUPERSAMPLE
    pose = _sample_pose(rng, identity, camera, hs, ws)
    mat = _draw_person(identity, pose, hs, ws)
    mat = _add_pattern(mat, identity.attributes["top_pattern"], pose, identity.params.pattern_period)
    if pose.flip:
        mat = mat[:, ::-1]
    mat = _add_occluder(mat, rng, camera)
    scene = _scene(camera, hs, ws)
    x0 = int(rng.integers(0, ws + 1))
    background = scene[:, x0 : x0 + ws]
    gain = rng.uniform(*camera.exposure)
    shade = _shading(mat, pose, identity.params, 0.45 if camera.modality == VISIBLE else 0.15)
    is_bg = (mat == BG).astype(np.float32)
    if camera.modality == VISIBLE:
        colors = np.take(_visible_table(identity, camera), mat, axis=0) * shade[..., None]
        img = colors + background * is_bg[..., None]
        img = _downsample(img * (np.asarray(camera.light, dtype=np.float32) * np.float32(gain)))
        sigma = (camera.blur, camera.blur, 0)
    else:
        values = np.take(_infrared_table(identity, camera, rng), mat) * shade
        img = _downsample((values + background * is_bg) * np.float32(gain))
        if camera.sensor == "nir":  # the illuminator lights the centre of the view most
            yy, xx = _grid(height, width)
            img = img * (1.15 - 0.5 * (((xx - width / 2) / width) ** 2 + ((yy - height / 2) / height) ** 2))
        sigma = (camera.blur, camera.blur)
    if camera.blur > 0:
        img = gaussian_filter(img, sigma=sigma, mode="nearest")
    img = img + np.float32(camera.noise) * rng.standard_normal(img.shape, dtype=np.float32)
    img = np.clip(img * np.float32(255.0) + np.float32(0.5), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img
