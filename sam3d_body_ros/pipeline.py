"""The whole per-frame job: image + person boxes (+ K) -> SAM 3D Body outputs per person."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from .core.camera import project_points, resolve_intrinsics
from .core.config import ModelConfig, get_config
from .core.crop import CropStage, prepare_crops, validate_boxes
from .core.errors import InputError

if TYPE_CHECKING:
    from .core.hands import FullMode
    from .runtime.backend import BackboneBackend

STAGES = ("crop", "backbone", "decoder", "total")
MODES = ("body", "full")  # upstream inference_type: body decoder only, or body + hand refinement (core/hands.py)


@dataclass(frozen=True)
class PipelineSettings:
    """What to run: model size, backbone runtime, weights and device."""

    model_config: str = "tiny"
    backend: str = "auto"  # runtime.backend.resolve_backend
    weights_dir: str | Path | None = None
    backbone_file: str | Path | None = None
    device: str = "auto"  # cuda when a GPU is usable, else cpu
    precision: str = "auto"  # the backend's default for the device (its BackendSpec.auto_precision)
    seed: int = 0
    mode: str = "body"  # MODES
    # `full` mode only: corrections of upstream quirks (core/hands.py FullModeOptions), off = upstream's behaviour.
    hand_wrist_test_own_box: bool = False
    hand_mirror_left_intrinsics: bool = False


@dataclass
class BodyResult:
    """Outputs of one frame: upstream field names, persons stacked on axis 0."""

    outputs: dict[str, np.ndarray]
    faces: np.ndarray
    K: np.ndarray  # the intrinsics used (3x3)
    timings_ms: dict[str, float] = field(default_factory=dict)
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # indices of the input boxes used
    rejected: list[str] = field(default_factory=list)  # why each dropped box was dropped
    intrinsics_note: str | None = None  # why default intrinsics were used, if they were

    @property
    def num_persons(self) -> int:
        return int(self.outputs["bbox"].shape[0])


class BodyPipeline:
    """Crops -> backbone backend -> decoder/heads/MHR; one instance per model, reused across frames."""

    def __init__(self, settings: PipelineSettings = PipelineSettings(), backend: BackboneBackend | None = None) -> None:
        """`backend`: an already built backbone backend to use instead of building one from `settings` (the bench
        shares the one it has just timed)."""
        from .core.checkpoint import load_checkpoint
        from .core.synthetic import random_head
        from .runtime.backend import create_backend, resolve_device
        from .runtime.cuda_graph import BucketedRunner
        from .runtime.torch_backend import head_runner, make_runner

        if settings.mode not in MODES:
            raise ValueError(f"unknown mode {settings.mode!r}; choose one of {list(MODES)}")
        full = settings.mode == "full"
        self.settings = settings
        self.device = resolve_device(settings.device)
        if settings.weights_dir:
            loaded = load_checkpoint(Path(settings.weights_dir), hands=full)
            self.cfg: ModelConfig = loaded.cfg
            head, backbone_state = loaded.head, loaded.backbone_state
        else:
            self.cfg = get_config(settings.model_config)
            head, backbone_state = random_head(self.cfg, seed=settings.seed, hands=full), None
        self.weights_status: str = head.weights_description
        self.backend = backend or create_backend(
            settings.backend,
            self.cfg,
            device=self.device,
            precision=settings.precision,  # "auto" resolved by create_backend
            backbone_state=backbone_state,
            backbone_file=settings.backbone_file,
            seed=settings.seed,
        )
        self.backend_name = f"{self.backend.name}/{self.backend.precision}"
        self.head = head.to(self.device).eval()
        self.run_head = head_runner(self.head, self.device)
        self.faces = self.head.faces.cpu().numpy().astype(np.int64)
        self._crops = CropStage(self.device, lambda warp: BucketedRunner(warp, graphs=self.device.type == "cuda"))
        m = self.cfg.mhr  # evaluate_bodies' packed columns: shape, model params, expr, cam_t, K
        self._body_eval = make_runner(BodyEvaluation(self.head.head_pose, (m.num_identity, m.num_model_params,
                                                                           m.num_expr, 3, 9)), self.device, compile=False)
        self.full_mode: FullMode | None = None
        if full:  # its three decoder calls wrapped as the body head is (compiled regions, TF32, CUDA graphs)
            from .core.hands import FullMode, FullModeOptions

            def wrap(module: torch.nn.Module, buckets: tuple[int, ...] | None) -> Callable[..., dict]:
                extra = {"buckets": buckets} if buckets else {}
                return make_runner(module, self.device, tf32=self.device.type == "cuda", **extra)

            options = FullModeOptions(settings.hand_wrist_test_own_box, settings.hand_mirror_left_intrinsics)
            self.full_mode = FullMode(self.head, wrap, options)

    def template_vertices(self) -> np.ndarray:
        """(V,3) rest-pose vertices of the body model (metres, camera axes): the shape the display mesh is reduced on."""
        hp = self.head.head_pose
        return (hp.mhr.base_shape.reshape(-1, 3) / 100.0 * hp.axis_flip).detach().cpu().numpy()  # cm -> m, MHR -> camera

    def warm_up(self, max_persons: int = 8) -> None:
        """Run one synthetic frame (and one body re-evaluation) per person count 1..max_persons, so that compilation
        and CUDA-graph capture happen now rather than on the first real frames (minutes the first time on CUDA, cached on disk after)."""
        image = np.full((480, 640, 3), 127, np.uint8)
        for n in range(1, max_persons + 1):
            r = self.infer(image, np.tile([[220.0, 40.0, 420.0, 440.0]], (n, 1)))
            o = r.outputs  # the body re-evaluation of smoothed parameters (people.People) is captured too
            self.evaluate_bodies(o["shape_params"], o["mhr_model_params"], o["expr_params"], o["pred_cam_t"], r.K)

    @torch.inference_mode()
    def infer(
        self, image_rgb: np.ndarray, boxes: np.ndarray, K: np.ndarray | None = None, *, drop_invalid: bool = False
    ) -> BodyResult:
        """Run all persons of one image in one batch. Boxes and intrinsics are checked here, once: an unusable box
        raises InputError, or with `drop_invalid` is left out (`kept`, `rejected`); K None or all zero (ROS's
        "uncalibrated") means default intrinsics (`intrinsics_note`); a malformed K raises InputError.

        On CUDA nothing waits for the GPU before the single device→host copy of the outputs (`full` mode: also one
        copy of the hand boxes in between); the backbone stage time is then taken from CUDA events, the decoder
        stage is the rest (in `full` mode it includes the hand crops)."""
        t0 = time.perf_counter()
        h, w = np.shape(image_rgb)[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        valid, rejected = validate_boxes(boxes, w, h)
        if rejected and not drop_invalid:
            raise InputError("; ".join(rejected))
        kept = np.flatnonzero(valid)
        K, note = resolve_intrinsics(K, w, h)
        crops = prepare_crops(image_rgb, boxes[kept], self.cfg.backbone.img_size, self.device, self._crops)
        n = crops.images.shape[0]
        if n == 0:
            return self._empty(K, kept, rejected, note)
        t1 = time.perf_counter()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if self.device.type == "cuda" else None
        if events:
            events[0].record()
        feats = self.backend(crops.images)  # prepare_crops made them on self.device
        if events:
            events[1].record()
        t2 = time.perf_counter()
        # The per-person camera data in one host→device copy: centre 2, side 1, affine 6, K 9.
        K32 = torch.as_tensor(K, dtype=torch.float32).reshape(1, 9).expand(n, 9)
        packed = torch.cat([crops.center, crops.side[:, None], crops.affine.reshape(n, 6), K32], 1).to(self.device)
        camera = (packed[:, :2], packed[:, 2], packed[:, 3:9].reshape(n, 2, 3), packed[:, 9:].reshape(n, 3, 3))
        hand_backbone: list[tuple] = []
        if self.full_mode is not None:
            out, hand_boxes = self.full_mode(image_rgb, feats, camera, crops.affine.numpy(), K,
                                             self._timed_backbone(hand_backbone), crops.frame)
        else:
            out = self.run_head(feats, *camera)
        outputs = _to_numpy(out)
        t3 = time.perf_counter()
        outputs["bbox"] = crops.boxes.numpy()
        if self.full_mode is not None:
            outputs.update(hand_boxes)
        backbone = events[0].elapsed_time(events[1]) / 1000.0 if events else t2 - t1
        backbone += sum(_span_seconds(*span) for span in hand_backbone)
        timings = {"crop": t1 - t0, "backbone": backbone, "decoder": t3 - t1 - backbone, "total": t3 - t0}
        return BodyResult(outputs, self.faces, K, {k: 1000.0 * v for k, v in timings.items()}, kept, rejected, note)

    def _timed_backbone(self, spans: list[tuple]) -> Callable[[torch.Tensor], torch.Tensor]:
        """The backbone, appending each call's (start, end) to `spans`: CUDA events (read by `_span_seconds` after
        the outputs' sync) or perf_counter times."""

        def run(images: torch.Tensor) -> torch.Tensor:
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                feats = self.backend(images)
                end.record()
                spans.append((start, end))
            else:
                start_s = time.perf_counter()
                feats = self.backend(images)
                spans.append((start_s, time.perf_counter()))
            return feats

        return run

    @torch.inference_mode()
    def evaluate_bodies(self, shape: np.ndarray, model_params: np.ndarray, expr: np.ndarray, cam_t: np.ndarray,
                        K: np.ndarray) -> dict[str, np.ndarray]:
        """The body model once for N persons' decoded parameters (e.g. smoothed ones): pred_vertices,
        pred_keypoints_3d, pred_joint_coords, pred_global_rots as `infer` gives them, and pred_keypoints_2d through
        `cam_t` (N,3) and K (3x3). On CUDA one graph replay per person count (eager MHR launches took 4-6 ms)."""
        n = len(model_params)
        packed = torch.from_numpy(np.concatenate([shape, model_params, expr, cam_t, np.broadcast_to(
            np.reshape(K, (1, 9)), (n, 9))], axis=1, dtype=np.float32)).to(self.device)  # one host->device copy
        return _to_numpy(self._body_eval(packed))

    def _empty(self, K: np.ndarray, kept: np.ndarray, rejected: list[str], note: str | None) -> BodyResult:
        """A result with zero persons and the right trailing shapes (so consumers can clear displays)."""
        shapes = output_shapes(self.cfg, self.settings.mode)
        outputs = {k: np.zeros((0, *shape), np.float32) for k, shape in shapes.items()}
        return BodyResult(outputs, self.faces, K, {k: 0.0 for k in STAGES}, kept, rejected, note)


class BodyEvaluation(torch.nn.Module):
    """Packed (N, shape | model params | expr | cam_t | K) rows -> the body model's outputs and 2D keypoints."""

    def __init__(self, head_pose: torch.nn.Module, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self.head_pose, self.sizes = head_pose, list(sizes)

    def forward(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        shape, params, expr, cam_t, K = torch.split(packed, self.sizes, dim=1)
        out = self.head_pose.body(shape, params, expr)
        out["pred_keypoints_2d"] = project_points(out["pred_keypoints_3d"] + cam_t[:, None], K.reshape(-1, 3, 3))
        return out


def _span_seconds(start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
    """Seconds between two perf_counter times or two completed CUDA events."""
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1000.0


def _to_numpy(out: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Copy all output fields to the host in one transfer (one sync instead of one per field)."""
    n = next(iter(out.values())).shape[0]
    flat = torch.cat([v.float().reshape(n, -1) for v in out.values()], 1).cpu().numpy()
    sizes = np.cumsum([0] + [int(np.prod(v.shape[1:])) for v in out.values()])
    return {k: flat[:, a:b].reshape(v.shape) for (k, v), a, b in zip(out.items(), sizes[:-1], sizes[1:])}


def model_info(config_name: str) -> dict[str, int | str]:
    """Sizes of the named model, counted on the meta device (no weights allocated)."""
    from torch import nn

    from .core.backbone import build_backbone, count_params
    from .core.model import SAM3DBodyHead

    cfg = get_config(config_name)
    with torch.device("meta"):
        head = SAM3DBodyHead(cfg, nn.Identity())  # the MHR rig holds buffers only, no learnables
    return {
        "config": cfg.name,
        "backbone": cfg.backbone.timm_name,
        "backbone_params": count_params(build_backbone(cfg, "meta")),
        "decoder_params": count_params(head),
        "mhr_vertices": cfg.mhr.num_vertices,
        "mhr_faces": cfg.mhr.num_faces,
        "mhr_joints": cfg.mhr.num_joints,
        "keypoints": cfg.mhr.num_keypoints,
        "image_size": cfg.backbone.img_size,
    }


def output_shapes(cfg: ModelConfig, mode: str = "body") -> dict[str, tuple[int, ...]]:
    """Per-person shape of every output field of `mode` (upstream names and sizes; `full` adds upstream's hand crop
    boxes and the corrected / diagnostic fields of core/hands.py)."""
    m = cfg.mhr
    shapes = {
        "pred_vertices": (m.num_vertices, 3),
        "pred_keypoints_3d": (m.num_keypoints, 3),
        "pred_keypoints_2d": (m.num_keypoints, 2),
        "pred_cam_t": (3,),
        "pred_joint_coords": (m.num_joints, 3),
        "pred_global_rots": (m.num_joints, 3, 3),
        "global_rot": (3,),
        "body_pose_params": (133,),
        "hand_pose_params": (108,),
        "scale_params": (28,),
        "shape_params": (m.num_identity,),
        "expr_params": (m.num_expr,),
        "mhr_model_params": (m.num_model_params,),
        "pred_pose_raw": (266,),
        "focal_length": (),
        "bbox": (4,),
    }
    if mode == "full":
        shapes.update({
            "pred_global_rots_refined": (m.num_joints, 3, 3),
            "pred_keypoints_2d_K": (m.num_keypoints, 2),
            "hand_valid": (2,),
            "lhand_bbox": (4,),
            "rhand_bbox": (4,),
        })
    return shapes
