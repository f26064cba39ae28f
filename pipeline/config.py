"""One frozen config per stage, resolved once: dataclass defaults < YAML < CLI.

Nothing below the CLI reads YAML, env vars or argv: each stage gets its own config
object. Unknown keys and wrong types are errors that name the key, the value and what
is allowed, raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CLASSES",
    "MIX_MODES",
    "ConfigError",
    "IndexConfig",
    "DecodeConfig",
    "AlignConfig",
    "WriteConfig",
    "RayConfig",
    "BuildConfig",
    "MixConfig",
    "StreamConfig",
    "TrainConfig",
    "load_config",
    "find_config",
    "shipped_configs",
    "config_to_dict",
    "BUILD_FIELDS_ADDED",
    "with_added_fields",
]

# DFEW's class order (index 0..6); soft labels and votes follow it everywhere.
CLASSES: tuple[str, ...] = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")


# midas-train's arms: (labels, mixing) of each; the paper's comparison is all four.
MIX_MODES: tuple[str, ...] = ("midas", "mixup", "soft", "none")


class ConfigError(ValueError):
    """A config value or key the user must fix; raised before any work starts."""


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; expected one of {', '.join(allowed)}")


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} is out of range; expected {lo} <= {name} <= {hi}")


ALPHA_RANGE = (1e-3, 1e3)


def _check_alpha(name: str, value: float) -> None:
    """Beta(alpha, alpha) is only useful for finite alpha in ALPHA_RANGE: below it lam is 0 or 1 to within
    rounding (no mixing), above it every lam is ~0.5, at 1e308 numpy returns 0 for every draw and inf or NaN
    put NaN into plans and batches."""
    lo, hi = ALPHA_RANGE
    if not lo <= value <= hi:  # also catches NaN (every comparison is False) and +-inf
        raise ConfigError(
            f"{name}={value!r} is not allowed; alpha must be a finite number with {lo:g} <= alpha <= {hi:g} "
            f"(lam ~ Beta(alpha, alpha); the MIDAS paper uses 0.8)"
        )


@dataclass(frozen=True)
class IndexConfig:
    dataset: str = "auto"  # dfew | manifest | auto (a directory is DFEW, a .csv/.parquet file a manifest)
    source: str = "auto"  # DFEW: videos (Clip/original) | frames (Clip/clip_224x224) | auto (videos first)
    classes: tuple[str, ...] = CLASSES  # class order of votes[] and soft[]; manifests name their columns so
    limit: int = 0  # keep only the first N clips in clip_id order (0 = all); for quick trials

    def __post_init__(self) -> None:
        _check_choice("index.dataset", self.dataset, ("auto", "dfew", "manifest"))
        _check_choice("index.source", self.source, ("auto", "videos", "frames"))
        if len(self.classes) < 2:
            raise ConfigError(f"index.classes={self.classes!r}: need at least 2 classes")
        _check_range("index.limit", self.limit, 0, 10**9)


@dataclass(frozen=True)
class DecodeConfig:
    num_frames: int = 16  # T: frames kept per clip, one per uniform segment (segment centres)
    decode_max_side: int = 640  # decode videos larger than this at reduced size (px, longest side; 0 = native)
    # pyav: decode only what the sampled frames need (2x faster on long-GOP movie clips); decord: the decoder of
    # builds made before, whose bytes a resumed or repaired old build keeps
    decoder: str = "pyav"
    # pyav, frames larger than decode_max_side: halve (2x2 averages while twice too large, then bilinear: 2.7x
    # faster at factors other than 2) or area (INTER_AREA at any factor: the bytes of the first PyAV builds)
    resize: str = "halve"

    def __post_init__(self) -> None:
        _check_range("decode.num_frames", self.num_frames, 1, 1024)
        _check_choice("decode.decoder", self.decoder, ("pyav", "decord"))
        _check_choice("decode.resize", self.resize, ("halve", "area"))
        if self.decode_max_side != 0:
            _check_range("decode.decode_max_side", self.decode_max_side, 64, 8192)


@dataclass(frozen=True)
class AlignConfig:
    detector: str = "retinaface"  # retinaface | mtcnn | none (input is already face-cropped: resize only)
    frame_size: int = 112  # S: output crops are S x S (112 default, 224 allowed)
    # whole-frame detection runs on frames downscaled to this longest side (px): with roi_size, only to find
    # the face to track (RetinaFace-mobilenet finds DFEW-sized faces at 320); without, for every landmark
    detect_max_side: int = 320
    detect_every: int = 2  # run the detector on every k-th sampled frame, interpolate the rest
    # > 0: track the face: each tried frame is searched in a window around the last face found (1.75x its
    # size), resized to roi_size x roi_size px, so landmarks come from a ~110 px face whatever the frame size;
    # 0 = every detection on the whole frame (the behaviour before roi_size: 0 with detect_max_side 640)
    roi_size: int = 192
    min_score: float = 0.8  # detections below this confidence count as "no face"
    eye_weight: int = 5  # each eye counts this often in the 5-point fit (1 = plain fit): eyes stay on the template
    smooth_window: int = 5  # centred moving average over per-frame transforms (frames; 1 = off)
    # the moving average never spans frames whose eye positions stray more than this many inter-ocular
    # distances from a straight line in time (a scene cut, a jump to another face); untried frames between two
    # faces that jump by 4x this are detected, not interpolated (0 = off: the behaviour before)
    smooth_max_shift: float = 0.25
    # a clip is rejected when fewer than this share of its sampled frames show a face, after every frame was
    # searched whole at the decoded size (the face leaves the frame or is hidden for most of the clip; 0 = keep)
    min_face_share: float = 0.5
    threads: int = 1  # intra-op threads per detector; several workers share a machine

    def __post_init__(self) -> None:
        _check_choice("align.detector", self.detector, ("retinaface", "mtcnn", "none"))
        _check_range("align.frame_size", self.frame_size, 32, 512)
        _check_range("align.detect_max_side", self.detect_max_side, 64, 4096)
        _check_range("align.detect_every", self.detect_every, 1, 1024)
        if self.roi_size != 0:
            _check_range("align.roi_size", self.roi_size, 32, 1024)
        _check_range("align.min_score", self.min_score, 0.0, 1.0)
        _check_range("align.eye_weight", self.eye_weight, 1, 100)
        _check_range("align.smooth_window", self.smooth_window, 1, 1024)
        _check_range("align.smooth_max_shift", self.smooth_max_shift, 0.0, 100.0)
        _check_range("align.min_face_share", self.min_face_share, 0.0, 1.0)
        _check_range("align.threads", self.threads, 1, 256)


@dataclass(frozen=True)
class WriteConfig:
    out: str = "shards"  # output directory (a path every Ray node sees)
    format: str = "both"  # webdataset | parquet | both
    shard_size_mb: float = 256.0  # target shard size; shard boundaries follow from the plan, not timing
    overwrite: bool = False  # rebuild from scratch instead of resuming
    frames_compression: str = "zstd"  # Parquet codec of frames: zstd | lz4 | snappy | none (zstd: -9.6%, +0.3 ms/clip)

    def __post_init__(self) -> None:
        _check_choice("write.format", self.format, ("webdataset", "parquet", "both"))
        _check_choice("write.frames_compression", self.frames_compression, ("none", "zstd", "lz4", "snappy"))
        _check_range("write.shard_size_mb", self.shard_size_mb, 0.001, 1e6)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("webdataset", "parquet") if self.format == "both" else (self.format,)


@dataclass(frozen=True)
class RayConfig:
    workers: int = 0  # clips processed at once (0 = all cores of the local machine / cluster)
    address: str = ""  # join this Ray cluster ("" = RAY_ADDRESS if set, else start a local Ray)
    # clips one Ray task decodes and aligns (0 = auto: 1 for small jobs, up to 8, fewer over the last clips)
    clips_per_task: int = 0

    def __post_init__(self) -> None:
        _check_range("ray.workers", self.workers, 0, 100_000)
        _check_range("ray.clips_per_task", self.clips_per_task, 0, 10_000)


@dataclass(frozen=True)
class MixConfig:
    shards: str = "shards"  # the build-shards output to mix
    out: str = ""  # output directory ("" = <shards>/mixed)
    alpha: float = 0.8  # lam ~ Beta(alpha, alpha); the MIDAS paper uses 0.8
    copies: int = 1  # mixed samples per training clip of a fold
    fold: int = 0  # 1..5, or 0 = every fold
    seed: int = 0
    include_unassigned: bool = False  # also draw partners from clips in no fold (part 0)
    format: str = "both"  # webdataset | parquet | both
    shard_size_mb: float = 256.0
    overwrite: bool = False
    frames_compression: str = "zstd"  # Parquet codec of frames: zstd | lz4 | snappy | none (zstd: -9.6%, +0.3 ms/clip)

    def __post_init__(self) -> None:
        _check_alpha("mix.alpha", self.alpha)
        _check_choice("mix.frames_compression", self.frames_compression, ("none", "zstd", "lz4", "snappy"))
        _check_range("mix.copies", self.copies, 1, 10_000)
        _check_range("mix.fold", self.fold, 0, 5)
        _check_choice("mix.format", self.format, ("webdataset", "parquet", "both"))
        _check_range("mix.shard_size_mb", self.shard_size_mb, 0.001, 1e6)

    @property
    def formats(self) -> tuple[str, ...]:
        return ("webdataset", "parquet") if self.format == "both" else (self.format,)


@dataclass(frozen=True)
class StreamConfig:
    shards: str = "shards"  # a build-shards output
    fold: int = 1  # K: train on every part but K (and 0), evaluate on part K
    split: str = "train"  # train | val (val_fraction of the training parts' clips) | test (part K)
    batch_size: int = 32
    mix: bool = True  # MIDAS pairs inside each training batch (never in evaluation)
    alpha: float = 0.8  # lam ~ Beta(alpha, alpha)
    mix_prob: float = 1.0  # probability that a sample is mixed (else lam = 1)
    offline_mixed: bool = False  # also train on <shards>/mixed/fold=K (mix-offline output)
    include_unassigned: bool = False  # also train on part 0 (clips in no fold)
    augment: bool = True  # random resized crop, flip, brightness/contrast (same draw for every frame of a clip)
    crop_area: tuple[float, float] = (0.7, 1.0)  # random resized crop: fraction of the frame area kept
    crop_interp: str = "linear"  # random resized crop resampling: linear | nn (3.5x cheaper on the CPU, blockier)
    jitter: float = 0.2  # brightness and contrast factors drawn from [1 - jitter, 1 + jitter]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # per-channel, on [0, 1] pixels
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    device: str = "auto"  # auto (gpu if one is visible) | cpu | gpu
    device_id: int = 0  # GPU index (local rank)
    shard_id: int = 0  # this rank's slice of every epoch
    num_shards: int = 1  # world size
    seed: int = 0  # epoch order = permutation(seed, epoch); DALI random ops seeded from it too
    last_batch: str = ""  # drop | partial ("" = drop in training, partial in evaluation)
    format: str = "auto"  # webdataset | parquet | auto (webdataset when present)
    num_threads: int = 0  # DALI CPU threads (0 = auto: from the CPUs this rank may use)
    py_workers: int = 0  # processes reading samples for the external source (0 = auto, likewise)
    prefetch: int = 0  # batches read ahead (0 = auto: 4 on a GPU, 2 on the CPU)
    labels: str = "soft"  # soft: the vote histograms | onehot: one-hot of label (argmax of soft if -1), before mixing
    val_fraction: float = 0.0  # > 0: this fraction of the training parts' clips (seeded, by clip) is split "val"
    val_seed: int = 0  # seeds the choice of validation clips (with the fold)

    def __post_init__(self) -> None:
        _check_range("stream.fold", self.fold, 1, 5)
        _check_choice("stream.split", self.split, ("train", "val", "test"))
        _check_choice("stream.labels", self.labels, ("soft", "onehot"))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"stream.val_fraction={self.val_fraction!r} is out of range; expected 0 <= it < 1")
        if self.split == "val" and not self.val_fraction:
            raise ConfigError("stream.split='val' needs stream.val_fraction > 0")
        _check_range("stream.batch_size", self.batch_size, 1, 1 << 16)
        _check_alpha("stream.alpha", self.alpha)
        _check_range("stream.mix_prob", self.mix_prob, 0.0, 1.0)
        _check_choice("stream.device", self.device, ("auto", "cpu", "gpu"))
        _check_range("stream.num_shards", self.num_shards, 1, 1 << 20)
        _check_range("stream.shard_id", self.shard_id, 0, self.num_shards - 1)
        _check_choice("stream.last_batch", self.last_batch, ("", "drop", "partial"))
        _check_choice("stream.format", self.format, ("auto", "webdataset", "parquet"))
        if not 0 < self.crop_area[0] <= self.crop_area[1] <= 1:
            raise ConfigError(f"stream.crop_area={self.crop_area!r}: expected 0 < lo <= hi <= 1")
        _check_range("stream.jitter", self.jitter, 0.0, 1.0)
        _check_choice("stream.crop_interp", self.crop_interp, ("linear", "nn"))
        _check_range("stream.py_workers", self.py_workers, 0, 256)
        _check_range("stream.num_threads", self.num_threads, 0, 256)
        _check_range("stream.prefetch", self.prefetch, 0, 64)
        _check_choice("stream.labels", self.labels, ("soft", "onehot"))


@dataclass(frozen=True)
class TrainConfig:
    """midas-train: one fold (or the 5-fold protocol) of a DFER model on the shards."""

    shards: str = "shards"
    fold: int = 1  # K: evaluate on part K, train on the rest
    folds: str = ""  # "1-5" or "1,3": run these folds one after another, report mean and std ("" = fold)
    out: str = "runs/midas"  # metrics.jsonl, checkpoints, config.yaml, report.json (per fold: <out>/fold{K})
    epochs: int = 20
    batch_size: int = 32  # per rank
    accum_steps: int = 1  # gradient accumulation: optimizer step every N batches
    lr: float = 5e-4  # peak AdamW learning rate (after warm-up)
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0  # linear warm-up, then cosine decay to 0
    loss: str = "soft"  # soft: sum(-y log p) against the (mixed) targets | hard: cross-entropy on the label
    mix: bool = True  # MIDAS pairs in the loader (on the device); False = mix_mode "soft" (kept for old configs)
    # midas (soft labels, mixed) | mixup (one-hot labels, same mixing) | soft (soft labels, no mixing) |
    # none (one-hot, no mixing); a comma list ("midas,mixup,soft,none") runs every arm; "" = from `mix`
    mix_mode: str = ""
    val_fraction: float = 0.0  # > 0: hold out this fraction of the training clips; its UAR chooses the epoch
    val_seed: int = 0  # seeds the choice of validation clips
    # soft-label metrics: a clip is "clear" when its top class holds at least this share of the votes
    # (8 of DFEW's 10), "ambiguous" otherwise; UAR/WAR are reported for each group (docs/training.md)
    clear_share: float = 0.8
    alpha: float = 0.8
    mix_prob: float = 1.0
    offline_mixed: bool = False  # add <shards>/mixed/fold=K to the training data
    include_unassigned: bool = False  # add part 0 (clips in no fold) to the training data
    model: str = "resnet18_transformer"  # resnet18_transformer | r2plus1d
    width: int = 64  # channels of the first stage (64 = ResNet-18); small values for tests
    temporal_layers: int = 2  # transformer layers over the frame features
    dropout: float = 0.1
    pretrained: str = ""  # a local state dict (torch.save of model.state_dict()) to start from
    resume: bool = False  # continue from <out>/fold{K}/last.pt
    seed: int = 0
    device: str = "auto"  # auto | cpu | gpu
    amp: bool = True  # bfloat16 autocast on the GPU (ignored on the CPU)
    channels_last: bool = True  # NHWC activations for the 2D frame encoder on the GPU (ignored on the CPU)
    compile: bool = False  # torch.compile the model (first steps pay the compilation)
    compile_backend: str = "inductor"  # torch.compile backend ("eager" traces only: tests)
    py_workers: int = 0  # loader processes per rank (0 = from the CPUs available to the rank)
    num_threads: int = 0  # DALI CPU threads per rank (0 = from the CPUs available to the rank)
    max_steps: int = 0  # cap on optimizer steps per epoch (0 = the whole epoch); for smoke runs
    log_samples: bool = False  # write the sample positions each rank trained on (audits, tests)
    tensorboard: bool = True  # also log to TensorBoard when the package is installed

    def __post_init__(self) -> None:
        _check_range("train.fold", self.fold, 1, 5)
        _check_range("train.epochs", self.epochs, 1, 100_000)
        _check_range("train.batch_size", self.batch_size, 1, 1 << 16)
        _check_range("train.accum_steps", self.accum_steps, 1, 1 << 16)
        if not self.lr > 0:
            raise ConfigError(f"train.lr={self.lr!r} must be > 0")
        _check_alpha("train.alpha", self.alpha)
        _check_choice("train.loss", self.loss, ("soft", "hard"))
        _check_choice("train.model", self.model, ("resnet18_transformer", "r2plus1d"))
        _check_range("train.width", self.width, 4, 1024)
        _check_choice("train.device", self.device, ("auto", "cpu", "gpu"))
        _check_range("train.dropout", self.dropout, 0.0, 1.0)
        if self.folds and not all(part.strip().replace("-", "").isdigit() for part in self.folds.split(",")):
            raise ConfigError(f"train.folds={self.folds!r}: expected e.g. 1-5 or 1,3")
        arms = self.arms()
        if not self.mix and any(a in ("midas", "mixup") for a in arms) and self.mix_mode:
            raise ConfigError(f"train.mix=false conflicts with train.mix_mode={self.mix_mode!r}; use mix_mode alone")
        if not 0.0 < self.clear_share <= 1.0:
            raise ConfigError(f"train.clear_share={self.clear_share!r} is out of range; expected 0 < it <= 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"train.val_fraction={self.val_fraction!r} is out of range; expected 0 <= it < 1")
        if self.offline_mixed and arms != ["midas"]:
            raise ConfigError(f"train.offline_mixed goes with mix_mode midas only (got {','.join(arms)}): "
                              "offline-mixed samples are mixed and carry mixed soft labels")
        _check_range("train.py_workers", self.py_workers, 0, 256)
        _check_range("train.num_threads", self.num_threads, 0, 256)

    def arms(self) -> list[str]:
        """The mix modes to run: `mix_mode` split on commas, else "midas" (mix) or "soft" (no mix)."""
        if not self.mix_mode:
            return ["midas" if self.mix else "soft"]
        arms = [a.strip() for a in self.mix_mode.split(",") if a.strip()]
        for a in arms:
            _check_choice("train.mix_mode", a, MIX_MODES)
        if not arms or len(set(arms)) != len(arms):
            raise ConfigError(f"train.mix_mode={self.mix_mode!r}: expected distinct arms from {', '.join(MIX_MODES)}")
        return arms

    def fold_list(self) -> list[int]:
        """The folds to run: `folds` parsed ("1-5", "1,3"), else [fold]."""
        if not self.folds:
            return [self.fold]
        out: list[int] = []
        for part in self.folds.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
        if not all(1 <= k <= 5 for k in out):
            raise ConfigError(f"train.folds={self.folds!r}: folds are 1..5")
        return out


@dataclass(frozen=True)
class BuildConfig:
    """Groups the stage configs of build-shards; stored whole in index.json."""

    dataset_root: str = ""
    index: IndexConfig = field(default_factory=IndexConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    write: WriteConfig = field(default_factory=WriteConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def output_config(self) -> dict[str, Any]:
        """The part of the config the shard bytes depend on (not where or how fast it ran)."""
        d = config_to_dict(self)
        del d["ray"]
        del d["write"]["overwrite"]
        del d["write"]["out"]
        return d


# build-shards fields added after builds were made, with the value that reproduces those builds: a config
# stored without the key (plan.json, index.json) was built with it, so resume and repair keep working.
BUILD_FIELDS_ADDED: dict[str, Any] = {
    "align.roi_size": 0, "decode.decoder": "decord", "align.smooth_max_shift": 0.0, "align.min_face_share": 0.0,
    "decode.resize": "area",
}


def with_added_fields(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored build config with every field added since filled in with its old value."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in stored.items()}
    for dotted, value in BUILD_FIELDS_ADDED.items():
        section, name = dotted.split(".")
        if isinstance(out.get(section), dict):
            out[section].setdefault(name, value)
    return out


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = v
    return out


def _coerce(where: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotated type `tp`; YAML ints may stand for floats."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if value is None:
            return ""
    elif origin is tuple:
        args = typing.get_args(tp)
        item = args[0] if args else str
        if isinstance(value, (list, tuple)) and (args[-1:] == (Ellipsis,) or len(value) == len(args)):
            return tuple(_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value))
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(where, value, arg)
            except ConfigError:
                continue
    else:  # pragma: no cover - a field type this loader does not know is our bug
        raise AssertionError(f"unsupported config type {tp!r} at {where}")
    raise ConfigError(f"{where}={value!r} has the wrong type; expected {getattr(tp, '__name__', tp)}")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown config key {where + '.' if where else ''}{unknown[0]}; "
            f"known keys{' of ' + where if where else ''}: {', '.join(sorted(names))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping of {tp.__name__} fields, got {value!r}")
            kwargs[name] = _from_dict(tp, value, key)
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted}: {p} is not a section")
    node[parts[-1]] = value


def parse_set(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """`--set section.field=value` strings -> {dotted: value}; values parse as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return out


# The shipped configs (package data, so an installed package has them too): configs/<section>/<name>.yaml,
# where the section is the command's: build (build-shards), mix (mix-offline), train (midas-train).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
_SECTIONS: dict[type, str] = {BuildConfig: "build", MixConfig: "mix", TrainConfig: "train"}


def shipped_configs(section: str) -> list[str]:
    """Names of the shipped configs of one section (`train` -> ['dfew', 'dfew-compare', 'quick'])."""
    return sorted(p.stem for p in (CONFIG_DIR / section).glob("*.yaml"))


def find_config(value: str | Path, section: str | None) -> Path:
    """The YAML file `--config VALUE` means: a file that exists (from the working directory), else a shipped
    config of `section` named VALUE (`dfew`, `dfew.yaml`, or its path in the repository,
    `configs/train/dfew.yaml`), so a shipped config works by name from any directory."""
    p = Path(value)
    if p.is_file():
        return p
    shipped = shipped_configs(section) if section else []
    parts = p.parts
    by_name = len(parts) == 1 or parts[-3:-1] == ("configs", section)
    if section and by_name and p.suffix in ("", ".yaml", ".yml"):
        candidate = CONFIG_DIR / section / f"{p.stem if p.suffix else p.name}.yaml"
        if candidate.is_file():
            return candidate
    names = f"; the shipped {section} configs are: {', '.join(shipped)} (e.g. --config {shipped[0]})" if shipped else ""
    raise ConfigError(f"config file {value} does not exist{names}")


def load_config(cls: type, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """Resolve `cls` (BuildConfig, MixConfig, ...) from defaults < YAML file < overrides.

    `yaml_path` is a file or the name of a shipped config of the class's command (`find_config`).
    `overrides` maps dotted keys ("decode.num_frames") to values; None values mean
    "not given on the command line" and are dropped.
    """
    data: dict[str, Any] = {}
    if yaml_path:
        p = find_config(yaml_path, _SECTIONS.get(cls))
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping, got {type(loaded).__name__}")
        data = loaded
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return _from_dict(cls, data, "")
    except TypeError as e:  # dataclass rejected the kwargs: report as a config error
        raise ConfigError(str(e)) from e
