"""A synthetic short-axis cardiac cine-MRI cohort, written in the ACDC challenge's on-disk layout.

mireg ships this "phantom" so that every recipe, test and benchmark runs without downloading ACDC.
Each patient is a stack of short-axis slices (base -> apex) at end-diastole (ED, frame 1) and
end-systole (ES), labelled like ACDC: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.

The anatomy is a simple geometric model: the LV is a slightly elliptical blood disc inside a
myocardial ring that narrows towards the apex, the RV is a crescent hugging the septal side that
vanishes before the apex, and ES shrinks the cavities while conserving myocardial area (so the wall
thickens). The five ACDC groups change the anatomy (dilated thin-walled LV with low ejection
fraction for DCM, thick wall and small cavity for HCM, a thin akinetic wall segment for MINF, a
dilated poorly contracting RV for RV, normal for NOR).

Why so much variation: a phantom with a fixed layout and fixed contrast is learnt from two labelled
patients, which makes it useless for semi-supervised experiments, where the point is that labels
are scarce. So every patient draws its own heart position, size, orientation (any in-plane angle,
optionally mirrored), tissue contrasts, gamma, blur, bias field, noise level, ghosting and
intensity scale, and the scene contains look-alikes that are *not* labelled (a blood-bright
aorta, bright vessels in the lungs, bright fat) plus papillary muscles that *are* labelled LV
cavity although they look like myocardium. The heart always stays visible to a human reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mireg.files import atomic_write, atomic_write_text

__all__ = ["GROUPS", "PhantomPatient", "generate_cohort", "generate_patient"]

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")

# Per-group anatomy ranges (uniform draws) at size scale 1: LV cavity radius at the base (mm, ED),
# LV wall thickness (mm, ED), LV ejection fraction, RV crescent width at the base (mm, ED), RV
# lateral half-extent (x LV epicardial radius), RV ejection fraction.
_ANATOMY_KEYS = ("lv_r", "wall", "ef", "rv_w", "rv_b", "rv_ef")
# fmt: off
_ANATOMY_TABLE: dict[str, tuple[tuple[float, float], ...]] = {
    "NOR":  ((21, 26), (7.5, 10.0), (0.55, 0.70), (12, 18), (1.15, 1.35), (0.45, 0.60)),
    "DCM":  ((29, 35), (5.5, 7.5), (0.10, 0.35), (12, 20), (1.10, 1.30), (0.25, 0.45)),
    "HCM":  ((16, 21), (13.0, 18.0), (0.60, 0.80), (10, 16), (1.10, 1.30), (0.45, 0.65)),
    "MINF": ((25, 31), (7.5, 9.5), (0.20, 0.40), (12, 18), (1.15, 1.35), (0.35, 0.55)),
    "RV":   ((19, 24), (7.5, 9.5), (0.50, 0.65), (24, 34), (1.40, 1.70), (0.15, 0.35)),
}
# fmt: on
_ANATOMY = {g: dict(zip(_ANATOMY_KEYS, row, strict=True)) for g, row in _ANATOMY_TABLE.items()}


@dataclass
class PhantomPatient:
    """One synthetic patient, in memory.

    Attributes:
        patient_id: ACDC-style identifier, e.g. ``"patient001"``.
        group: Diagnostic group, one of :data:`GROUPS`.
        height: Height in cm.
        weight: Weight in kg.
        n_frames: Number of frames of the (notional) cine sequence.
        ed_frame: End-diastolic frame number (always 1, as in ACDC).
        es_frame: End-systolic frame number.
        spacing: Voxel size in mm: (in-plane x, in-plane y, slice).
        frames: Frame number -> (image int16 (X, Y, Z), label uint8 (X, Y, Z)).
    """

    patient_id: str
    group: str
    height: float
    weight: float
    n_frames: int
    ed_frame: int
    es_frame: int
    spacing: tuple[float, float, float]
    frames: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(*lo_hi))


def _disc(
    p: np.ndarray, q: np.ndarray, cp: float, cq: float, ra: float | np.ndarray, rb: float | np.ndarray
) -> np.ndarray:
    """Boolean mask of the axis-aligned ellipse centred at (cp, cq) with semi-axes (ra, rb)."""
    inside: np.ndarray = ((p - cp) / ra) ** 2 + ((q - cq) / rb) ** 2 < 1.0
    return inside


@dataclass(frozen=True)
class _Heart:
    """Per-patient heart parameters; lengths in mm, at the base and at ED unless noted."""

    r_out: float  # LV epicardial radius
    wall: float  # LV wall thickness
    ef: float  # LV ejection fraction
    ecc: float  # LV ellipticity (ratio of the semi-axes ~ ecc**2)
    apex: float  # long-axis profile steepness; > 1: the LV is gone before the last slice
    infarct: tuple[float, float, float] | None  # MINF: segment centre, half-width (rad), wall
    rv_w: float  # RV crescent width
    rv_b: float  # RV lateral half-extent, as a multiple of the LV epicardial radius
    rv_ef: float  # RV ejection fraction
    rv_end: float  # fraction of the stack after which the RV is gone
    rv_near: float  # how far (x LV radius) the crescent wraps behind the LV centre
    rv_wall: float  # RV free-wall thickness (unlabelled)
    papillary: np.ndarray  # (n, 3): angle, radius (mm), distance (x cavity radius)
    epi_fat: tuple[float, float, float]  # epicardial fat pad: centre, half-width (rad), thickness


def _draw_heart(rng: np.random.Generator, group: str) -> _Heart:
    """Draw a heart of the given group, with a patient-wide size scale."""
    an = _ANATOMY[group]
    scale = _u(rng, (0.8, 1.25))
    wall = _u(rng, an["wall"]) * scale
    infarct = None
    if group == "MINF":
        infarct = (_u(rng, (0, 2 * np.pi)), np.deg2rad(_u(rng, (35, 60))), wall * 0.45)
    n_pm = int(rng.integers(1, 4))
    papillary = np.stack(
        [
            np.pi + rng.uniform(-0.9, 0.9, n_pm),  # papillary muscles face away from the septum
            rng.uniform(2.0, 4.0, n_pm) * scale,
            rng.uniform(0.45, 0.65, n_pm),
        ],
        axis=1,
    )
    return _Heart(
        r_out=_u(rng, an["lv_r"]) * scale + wall,
        wall=wall,
        ef=_u(rng, an["ef"]),
        ecc=_u(rng, (0.88, 1.12)),
        apex=_u(rng, (0.88, 1.03)),
        infarct=infarct,
        rv_w=_u(rng, an["rv_w"]) * scale,
        rv_b=_u(rng, an["rv_b"]),
        rv_ef=_u(rng, an["rv_ef"]),
        rv_end=_u(rng, (0.75, 0.95)),
        rv_near=_u(rng, (0.0, 0.3)),
        rv_wall=_u(rng, (2.5, 4.0)),
        papillary=papillary,
        epi_fat=(_u(rng, (0, 2 * np.pi)), _u(rng, (0.3, 1.5)), _u(rng, (1.5, 4.0))),
    )


def _heart_masks(
    h: _Heart, u: np.ndarray, v: np.ndarray, tz: np.ndarray, systole: bool
) -> dict[str, np.ndarray]:
    """Boolean masks of the cardiac structures in heart coordinates (u points to the RV).

    Args:
        h: Heart parameters.
        u: Distance along the LV -> RV axis (mm), shape (X, Y, Z).
        v: Distance across it (mm), same shape.
        tz: Position along the stack, 0 (base) .. 1 (apex), shape (1, 1, Z).
        systole: Render end-systole instead of end-diastole.

    Returns:
        Masks ``lv_cav``, ``lv_all`` (cavity + myocardium), ``rv_cav``, ``rv_wall``, ``papillary``
        and ``epi_fat``.
    """
    rho = np.sqrt((u / h.ecc) ** 2 + (v * h.ecc) ** 2)
    r = np.hypot(u, v) + 1e-9

    def cos_to(angle: float) -> np.ndarray:
        """Cosine of the polar angle's distance to ``angle`` (cheaper than arctan2)."""
        cosine: np.ndarray = (u * np.cos(angle) + v * np.sin(angle)) / r
        return cosine

    bump: np.ndarray | float = 0.0  # 1 inside the MINF segment, fading to 0 at its edges
    inf_wall = 0.0
    if h.infarct is not None:
        centre, half, inf_wall = h.infarct
        bump = np.clip((cos_to(centre) - np.cos(half)) / (1 - np.cos(half)), 0, 1) ** 0.5

    ro_ed = h.r_out * np.sqrt(np.clip(1.0 - (tz * h.apex) ** 2, 0, 1))  # ellipsoidal long axis
    rc_ed = np.clip(ro_ed - h.wall, 0, None)
    rv_w = h.rv_w * np.clip(1.0 - tz / h.rv_end, 0, 1) ** 0.7  # the RV tapers faster than the LV
    rv_b = h.rv_b
    if systole:
        # Cavity area shrinks by the EF, myocardial area is conserved, so the wall thickens.
        rc = rc_ed * np.sqrt(1.0 - h.ef)
        ro = np.sqrt(rc**2 + ro_ed**2 - rc_ed**2)
        cav = rc + 0.8 * (rc_ed - rc) * bump  # the akinetic segment barely moves inwards
        rv_w, rv_b = rv_w * (1.0 - h.rv_ef) ** 0.6, rv_b * (1.0 - h.rv_ef) ** 0.15
    else:
        rc, ro, cav = rc_ed, ro_ed, rc_ed
    outer = np.where(ro > 0, cav + (ro - rc) * (1 - bump) + inf_wall * bump, 0.0)
    lv_all = rho < outer

    # RV: an ellipse from just behind the LV centre to the crescent's outer edge, minus the LV.
    near, far = -h.rv_near * ro, ro + rv_w
    uc, ua, ub = (far + near) / 2, (far - near) / 2 + 1e-6, ro * rv_b + 1e-6
    has_rv = rv_w > 2.5
    rv_cav = has_rv & (((u - uc) / ua) ** 2 + (v / ub) ** 2 < 1) & ~lv_all
    rv_out = ((u - uc) / (ua + h.rv_wall)) ** 2 + (v / (ub + h.rv_wall)) ** 2 < 1
    rv_wall = has_rv & rv_out & ~lv_all & ~rv_cav

    papillary = np.zeros(u.shape, dtype=bool)
    for ang, radius, pos in h.papillary:
        d = pos * rc
        blob = (u - d * np.cos(ang)) ** 2 + (v - d * np.sin(ang)) ** 2 < radius**2
        papillary |= blob & (rc > 3 * radius)  # only where the cavity is large enough
    fat_centre, fat_half, fat_t = h.epi_fat
    epi_fat = (rho < outer + fat_t) & (ro > 0) & (cos_to(fat_centre) > np.cos(fat_half))
    epi_fat &= ~lv_all & ~rv_wall & ~rv_cav
    return {
        "lv_cav": rho < cav,
        "lv_all": lv_all,
        "rv_cav": rv_cav,
        "rv_wall": rv_wall,
        "papillary": papillary,
        "epi_fat": epi_fat,
    }


def _draw_levels(rng: np.random.Generator) -> dict[str, float]:
    """Tissue intensities on an ideal 0..1 scale; blood is brightest on average, not always."""
    blood = _u(rng, (0.75, 1.0))
    return {
        "blood": blood,
        "rv_blood": blood * _u(rng, (0.9, 1.05)),
        "myo": blood * _u(rng, (0.28, 0.62)),  # blood/myocardium contrast from strong to weak
        "tissue": _u(rng, (0.22, 0.5)),
        "fat": _u(rng, (0.6, 1.0)),
        "lung": _u(rng, (0.02, 0.10)),
        "liver": _u(rng, (0.25, 0.55)),
        "bone": _u(rng, (0.2, 0.5)),
        "vessel": blood * _u(rng, (0.7, 1.0)),
        "aorta": blood * _u(rng, (0.85, 1.05)),  # a blood-bright look-alike, never labelled
    }


def _background(
    rng: np.random.Generator,
    p: np.ndarray,
    q: np.ndarray,
    mediastinum: np.ndarray,
    centre: np.ndarray,
    r_out: float,
    tz: np.ndarray,
    lvl: dict[str, float],
) -> np.ndarray:
    """Paint the thorax around the heart, back to front, in patient coordinates (mm).

    ``p`` points to the patient's left and ``q`` anteriorly; ``mediastinum`` (the heart plus a
    margin) is kept free of lungs, liver and vessels; ``centre`` is the LV centre.
    """
    shape = mediastinum.shape
    ba, bb = _u(rng, (120, 165)), _u(rng, (85, 115))  # body semi-axes: lateral, antero-posterior
    bp, bq = centre[0] - _u(rng, (20, 40)), centre[1] - _u(rng, (10, 30))  # heart: left, anterior
    fat_t = _u(rng, (4, 14))
    scene = np.zeros(shape)
    inner = np.broadcast_to(_disc(p, q, bp, bq, ba - fat_t, bb - fat_t), shape)
    scene[np.broadcast_to(_disc(p, q, bp, bq, ba, bb), shape)] = lvl["fat"]  # subcutaneous fat
    scene[inner] = lvl["tissue"]
    free = inner & ~mediastinum

    ls = 1.0 - 0.35 * tz  # the lungs recede towards the apex (diaphragm)
    for side in (-1.0, 1.0):
        lung = _disc(p, q, bp + side * 0.5 * ba, bq + 0.05 * bb, 0.36 * ba * ls, 0.62 * bb * ls)
        scene[lung & free] = lvl["lung"]
    # The liver rises into the apical slices from below.
    start = _u(rng, (0.3, 0.9))
    lt = np.clip((tz - start) / (1.0 - start), 0, 1) ** 0.5 + 1e-6
    liver = _disc(p, q, bp - 0.3 * ba, bq - 0.1 * bb, 0.55 * ba * lt, 0.55 * bb * lt)
    scene[liver & free] = lvl["liver"]
    # Small bright vessels in the lungs.
    for _ in range(int(rng.integers(2, 6))):
        side, (op, oq), r = rng.choice([-1.0, 1.0]), rng.uniform(-0.5, 0.5, 2), _u(rng, (2, 5))
        vessel = _disc(p, q, bp + side * ba * (0.5 + 0.3 * op), bq + 0.5 * bb * oq, r, r)
        scene[np.broadcast_to(vessel, shape) & free] = lvl["vessel"]
    # Descending aorta just behind the heart, and a vertebra behind it.
    ao_r = _u(rng, (9, 14))
    ao_ang = np.deg2rad(-90 + _u(rng, (-10, 40)))
    ao_d = r_out + ao_r + _u(rng, (4, 18))
    ao_p, ao_q = centre[0] + ao_d * np.cos(ao_ang), centre[1] + ao_d * np.sin(ao_ang)
    sp_r = _u(rng, (11, 17))
    sp_p, sp_q = bp + _u(rng, (-8, 8)), min(bq - bb + _u(rng, (22, 35)), ao_q - ao_r - sp_r - 3)
    scene[np.broadcast_to(_disc(p, q, sp_p, sp_q, sp_r, sp_r), shape) & inner] = lvl["bone"]
    scene[np.broadcast_to(_disc(p, q, ao_p, ao_q, ao_r, ao_r), shape) & inner] = lvl["aorta"]
    return scene


@dataclass(frozen=True)
class _Acquisition:
    """Per-patient imaging chain, shared by the ED and ES frames."""

    gamma: float
    blur: float  # in-plane gaussian sigma (voxels): partial volume
    bias: np.ndarray  # smooth multiplicative field, broadcastable to the volume
    ghost: float  # ghost amplitude (0: none)
    ghost_axis: int
    ghost_shift: int
    snr: float  # blood signal / noise sigma
    target: float  # typical stored blood value


def _draw_acquisition(
    rng: np.random.Generator, xn: np.ndarray, yn: np.ndarray, zn: np.ndarray
) -> _Acquisition:
    """Draw the imaging chain; ``xn, yn`` in [-1, 1] and ``zn`` in [-0.5, 0.5] (broadcastable)."""
    gamma, blur = _u(rng, (0.7, 1.5)), _u(rng, (0.5, 1.2))
    c = rng.uniform(-1, 1, 6)
    field = c[0] * xn + c[1] * yn + c[2] * xn * yn + c[3] * xn**2 + c[4] * yn**2 + c[5] * zn
    bias = 1.0 + _u(rng, (0.05, 0.3)) * field / np.abs(field).max()
    ghost = _u(rng, (0.04, 0.12)) if rng.random() < 0.35 else 0.0
    axis = int(rng.integers(0, 2))
    n = (xn.shape[0], yn.shape[1])[axis]
    return _Acquisition(
        gamma=gamma,
        blur=blur,
        bias=bias,
        ghost=ghost,
        ghost_axis=axis,
        ghost_shift=int(round(n * _u(rng, (0.2, 0.5)))),
        snr=_u(rng, (8, 30)),
        target=_u(rng, (250, 1400)),
    )


def _acquire(rng: np.random.Generator, ideal: np.ndarray, acq: _Acquisition, blood: float) -> np.ndarray:
    """Turn an ideal 0..1 intensity volume into a stored int16 scan."""
    img = ndimage.gaussian_filter(ideal**acq.gamma, sigma=(acq.blur, acq.blur, 0)) * acq.bias
    if acq.ghost > 0:  # a faint copy shifted along the phase-encoding axis
        img += acq.ghost * np.roll(img, acq.ghost_shift, axis=acq.ghost_axis)
    ref = blood**acq.gamma
    sigma = ref / acq.snr
    # Magnitude of a complex signal with gaussian noise on both channels: Rician statistics.
    img = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))
    stored: np.ndarray = np.clip(np.rint(img * acq.target / ref), 0, 32767).astype(np.int16)
    return stored


def generate_patient(index: int, seed: int) -> PhantomPatient:
    """Generate one patient (ED and ES frames) deterministically from ``(seed, index)``.

    Args:
        index: 0-based patient index; the id is ``patient{index + 1:03d}`` and the group is
            ``GROUPS[index % 5]``.
        seed: Cohort seed. The patient depends on ``(seed, index)`` only, so generating it alone
            gives the same arrays as generating it inside a cohort.

    Returns:
        The patient with its two labelled frames.
    """
    rng = np.random.default_rng([seed, index])
    group = GROUPS[index % len(GROUPS)]
    height = round(_u(rng, (150, 195)), 1)
    n_frames = int(rng.integers(20, 36))
    sp, sz = round(_u(rng, (1.3, 1.9)), 4), round(_u(rng, (5.0, 10.0)), 2)
    patient = PhantomPatient(
        patient_id=f"patient{index + 1:03d}",
        group=group,
        height=height,
        weight=round(_u(rng, (19, 32)) * (height / 100) ** 2, 1),  # from a plausible BMI
        n_frames=n_frames,
        ed_frame=1,
        es_frame=max(2, int(round(n_frames * _u(rng, (0.28, 0.42))))),  # ES ~ a third in
        spacing=(sp, sp, sz),
    )

    # Grids: (X, 1, 1) and (1, Y, 1) in mm about the image centre; per-slice values are (1, 1, Z).
    fov = _u(rng, (200, 260))
    nx, ny, nz = round(fov / sp), round(fov * _u(rng, (0.9, 1.1)) / sp), int(rng.integers(6, 11))
    x = (np.arange(nx) - (nx - 1) / 2)[:, None, None] * sp
    y = (np.arange(ny) - (ny - 1) / 2)[None, :, None] * sp
    tz = np.linspace(0.0, 1.0, nz)[None, None, :]  # 0 = base, 1 = apex

    # Patient frame (p: patient's left, q: anterior) = image frame rotated by any angle, maybe
    # mirrored, so the RV can point anywhere while the anatomy stays consistent.
    theta = _u(rng, (0, 2 * np.pi))
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    p = (x * np.cos(theta) + y * np.sin(theta)) * mirror
    q = -x * np.sin(theta) + y * np.cos(theta)

    # Heart frame: u from the LV centre towards the RV (anterior, patient's right), v across.
    heart = _draw_heart(rng, group)
    centre = rng.uniform(-1, 1, 2) * 20.0 / np.sqrt(2)  # offset from the image centre
    drift = rng.uniform(-4, 4, 2)[:, None, None, None] * (tz - 0.5)  # long axis slightly oblique
    alpha = np.deg2rad(135 + _u(rng, (-20, 20)))
    dp, dq = p - (centre[0] + drift[0]), q - (centre[1] + drift[1])
    u = dp * np.cos(alpha) + dq * np.sin(alpha)
    v = -dp * np.sin(alpha) + dq * np.cos(alpha)

    lvl = _draw_levels(rng)
    # Mediastinum: the heart plus a margin, kept free of lungs, liver and lung vessels.
    margin = _u(rng, (2, 8))
    med_u = 1.15 * heart.r_out + 0.5 * heart.rv_w + margin
    med_v = heart.r_out * heart.rv_b + margin
    mediastinum = _disc(u, v, 0.3 * heart.r_out, 0.0, med_u, med_v)
    scene = _background(rng, p, q, mediastinum, centre, heart.r_out, tz, lvl)
    acq = _draw_acquisition(rng, x / x.max(), y / y.max(), tz - 0.5)

    for frame, systole in ((1, False), (patient.es_frame, True)):
        m = _heart_masks(heart, u, v, tz, systole)
        img = scene.copy()
        img[m["epi_fat"]] = lvl["fat"]
        img[m["rv_wall"]] = lvl["myo"]
        img[m["rv_cav"]] = lvl["rv_blood"]
        img[m["lv_all"]] = lvl["myo"]
        img[m["lv_cav"]] = lvl["blood"]
        img[m["lv_cav"] & m["papillary"]] = lvl["myo"]  # dark, yet labelled LV cavity (as ACDC)
        label = np.zeros(img.shape, dtype=np.uint8)
        label[m["rv_cav"]] = 1
        label[m["lv_all"]] = 2
        label[m["lv_cav"]] = 3
        patient.frames[frame] = (_acquire(rng, img, acq, lvl["blood"]), label)
    return patient


def _save_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    affine = np.diag([*spacing, 1.0])
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_zooms(spacing)
    img.header.set_xyzt_units("mm")
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def generate_cohort(
    root: str | os.PathLike[str],
    n_patients: int = 60,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write a synthetic cohort under ``root/training`` in the ACDC layout.

    For each patient ``patientNNN`` (001..n) the folder holds ``Info.cfg`` and, for the ED frame
    (01) and the ES frame, ``patientNNN_frameFF.nii.gz`` (int16 image) and
    ``patientNNN_frameFF_gt.nii.gz`` (uint8 labels). Files are written atomically; nothing is
    written outside ``root``.

    Args:
        root: Destination folder (created if missing).
        n_patients: Number of patients; groups cycle through :data:`GROUPS`.
        seed: Cohort seed; patient ``i`` depends only on ``(seed, i)``.
        progress: Optional callback, called as ``progress(i + 1, n_patients)`` after each patient.
    """
    train = Path(root) / "training"
    for i in range(n_patients):
        pat = generate_patient(i, seed)
        folder = train / pat.patient_id
        folder.mkdir(parents=True, exist_ok=True)
        # Same keys and order as the ACDC release's Info.cfg files.
        info = (
            f"ED: {pat.ed_frame}\nES: {pat.es_frame}\nGroup: {pat.group}\n"
            f"Height: {pat.height:.1f}\nNbFrame: {pat.n_frames}\nWeight: {pat.weight:.1f}\n"
        )
        atomic_write_text(folder / "Info.cfg", info)
        for frame, (image, label) in pat.frames.items():
            stem = f"{pat.patient_id}_frame{frame:02d}"
            _save_nifti(folder / f"{stem}.nii.gz", image, pat.spacing)
            _save_nifti(folder / f"{stem}_gt.nii.gz", label, pat.spacing)
        if progress is not None:
            progress(i + 1, n_patients)
