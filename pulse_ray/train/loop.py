"""Progressive GAN training of the bundled face generator (StyleGAN v1 recipe, scaled down).

Recipe: non-saturating logistic loss, lazy R1 penalty on reals, equalized learning rate (in the
layers), mapping lr multiplier 0.01 (in the layers), style mixing, EMA of the generator weights,
and progressive growing 8 -> 16 -> 32 -> 64 px with a linear fade-in of each new resolution.

The whole training state (G, D, EMA, optimizers, image counter, RNG) is one file,
``RUN/state.pt``; ``--resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..models.checkpoint import compute_gaussian_fit, save_checkpoint
from .data import Framing, prepare_faces
from .networks import Discriminator, ProgressiveGenerator


@dataclass
class TrainConfig:
    data: str = "../shared/data/faces.parquet"
    resolution: int = 64
    g_channels: list = field(default_factory=lambda: [128, 128, 64, 32, 16])
    d_channels: list = field(default_factory=lambda: [128, 128, 64, 32, 16])
    start_level: int = 2  # 8 px
    stabilize_kimg: list = field(default_factory=lambda: [25, 30, 50, 10_000])  # per level from start_level
    fade_kimg: list = field(default_factory=lambda: [0, 25, 40, 50])
    batch: list = field(default_factory=lambda: [64, 64, 32, 32])
    lr: float = 0.0015
    r1_gamma: float = 1.0
    r1_every: int = 4
    mix_prob: float = 0.9
    ema_halflife_kimg: float = 10.0
    ema_rampup: float = 0.05  # early on, the EMA half-life is at most this share of the images shown
    held_out_share: float = 0.03
    framing: str = "haar"  # "ffhq": dlib landmarks, the crop make-manifest --align ffhq makes
    align_scale: float = 1.0  # the FFHQ square's size (1.0 = FFHQ's own framing)
    colour_only: bool = False  # drop grey photos
    balance_by: str = ""  # a label (e.g. "race"): draw each of its groups equally often
    seed: int = 0

    def framing_spec(self) -> Framing:
        return Framing(self.framing, self.align_scale, "colour" if self.colour_only else "any")


class Schedule:
    """Maps images shown to ``(level, alpha, batch)``."""

    def __init__(self, cfg: TrainConfig, max_level: int):
        self.phases = []  # (start_img, level, fade_imgs, batch)
        start = 0
        for i, level in enumerate(range(cfg.start_level, max_level + 1)):
            fade = cfg.fade_kimg[i] * 1000 if i > 0 else 0
            self.phases.append((start, level, fade, cfg.batch[i]))
            start += fade + cfg.stabilize_kimg[i] * 1000

    def at(self, cur_img: int) -> tuple[int, float, int]:
        start, level, fade, batch = [p for p in self.phases if p[0] <= cur_img][-1]
        alpha = min(1.0, (cur_img - start) / fade) if fade else 1.0
        return level, alpha, batch


def _without_first_moment(opt_state: dict) -> dict:
    """Adam's state without ``exp_avg`` where beta1 = 0: that moment is then just the last gradient,
    overwritten exactly at the next step, so dropping it keeps a resume exact and the file a quarter smaller."""
    if any(group["betas"][0] != 0 for group in opt_state["param_groups"]):
        return opt_state
    state = {k: {n: v for n, v in st.items() if n != "exp_avg"} for k, st in opt_state["state"].items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _with_first_moment(opt_state: dict) -> dict:
    """The inverse of :func:`_without_first_moment` (zeros, which the next step overwrites)."""
    state = {k: st if "exp_avg" in st or "exp_avg_sq" not in st else {**st, "exp_avg": torch.zeros_like(st["exp_avg_sq"])}
             for k, st in opt_state["state"].items()}
    return {"state": state, "param_groups": opt_state["param_groups"]}


def _atomic_torch_save(obj, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str, device: torch.device):
        self.cfg, self.run_dir, self.device = cfg, run_dir, device
        torch.manual_seed(cfg.seed)
        self.G = ProgressiveGenerator(cfg.g_channels).to(device)
        self.D = Discriminator(cfg.d_channels).to(device)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        adam = dict(lr=cfg.lr, betas=(0.0, 0.99), eps=1e-8)
        self.opt_g = torch.optim.Adam(self.G.parameters(), **adam)
        self.opt_d = torch.optim.Adam(self.D.parameters(), **adam)
        self.schedule = Schedule(cfg, self.G.max_level)
        self.cur_img, self.step = 0, 0
        self.sample_z = torch.randn(64, 512, generator=torch.Generator().manual_seed(123)).to(device)

    # ---- persistence --------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": asdict(self.cfg), "G": self.G.state_dict(), "D": self.D.state_dict(),
                "G_ema": self.G_ema.state_dict(), "opt_g": _without_first_moment(self.opt_g.state_dict()),
                "opt_d": _without_first_moment(self.opt_d.state_dict()), "cur_img": self.cur_img, "step": self.step,
                "rng": torch.get_rng_state()}

    def save(self) -> str:
        path = os.path.join(self.run_dir, "state.pt")
        _atomic_torch_save(self.state(), path)
        return path

    def load(self, path: str) -> None:
        st = torch.load(path, map_location=self.device, weights_only=True)
        self.G.load_state_dict(st["G"])
        self.D.load_state_dict(st["D"])
        self.G_ema.load_state_dict(st["G_ema"])
        self.opt_g.load_state_dict(_with_first_moment(st["opt_g"]))
        self.opt_d.load_state_dict(_with_first_moment(st["opt_d"]))
        for opt in (self.opt_g, self.opt_d):  # the optimizer state carries the old lr; the config decides
            for group in opt.param_groups:
                group["lr"] = self.cfg.lr
        self.cur_img, self.step = int(st["cur_img"]), int(st["step"])
        torch.set_rng_state(st["rng"].cpu())  # loaded onto the training device with the rest

    # ---- one iteration --------------------------------------------------------------------
    def train_step(self, reals: torch.Tensor, level: int, alpha: float) -> dict:
        cfg, b = self.cfg, reals.shape[0]
        # discriminator
        z = torch.randn(b, 512, device=self.device)
        with torch.no_grad():
            fakes = self.G(z, level, alpha, cfg.mix_prob)
        do_r1 = cfg.r1_gamma > 0 and self.step % cfg.r1_every == 0
        reals = reals.detach().requires_grad_(do_r1)
        real_logits = self.D(reals, level, alpha)
        fake_logits = self.D(fakes, level, alpha)
        d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        r1 = torch.zeros((), device=self.device)
        if do_r1:
            (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)
            r1 = grad.pow(2).sum(dim=(1, 2, 3)).mean()
            d_loss = d_loss + r1 * (cfg.r1_gamma / 2) * cfg.r1_every
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        # generator
        self.D.requires_grad_(False)
        z = torch.randn(b, 512, device=self.device)
        g_loss = F.softplus(-self.D(self.G(z, level, alpha, cfg.mix_prob), level, alpha)).mean()
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self.D.requires_grad_(True)
        # EMA
        halflife = min(cfg.ema_halflife_kimg * 1000, max(self.cur_img, b) * cfg.ema_rampup)
        beta = 0.5 ** (b / halflife)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.G_ema.parameters()), list(self.G.parameters()), 1 - beta)
        self.cur_img += b
        self.step += 1
        # tensors, not numbers: reading them waits for the GPU, so the loop reads them only when it logs
        return {"d": d_loss.detach(), "g": g_loss.detach(), "r1": r1.detach()}

    def sample_grid(self, level: int, alpha: float, path: str, n: int = 64) -> None:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # fixed noise; training's RNG untouched
            torch.manual_seed(0)
            imgs = self.G_ema(self.sample_z[:n], level, alpha)
        imgs = F.interpolate(imgs, size=self.cfg.resolution, mode="nearest")
        save_grid(((imgs + 1) / 2).clamp(0, 1), path, cols=8)


def save_grid(images: torch.Tensor, path: str, cols: int = 8) -> None:
    """Write ``[N, 3, H, W]`` images in [0, 1] as one PNG grid."""
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    grid = torch.ones(3, rows * h, cols * w)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = images[i].cpu()
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    tmp = f"{path}.tmp.png"
    Image.fromarray(arr).save(tmp)
    os.replace(tmp, path)


def progress_bar(share: float, elapsed_s: float, width: int = 20) -> str:
    """``[#####-----]  25% 0:10:00 left``: how far the run is toward its --minutes or --kimg stop."""
    share = min(max(share, 0.0), 1.0)
    filled = round(share * width)
    left = elapsed_s * (1 - share) / share if share > 0 else float("nan")
    left_s = "--:--:--" if left != left else f"{int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d}"
    return f"[{'#' * filled}{'-' * (width - filled)}] {share * 100:3.0f}% {left_s} left"


def load_dataset(cfg: TrainConfig, run_dir: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prepared faces as a float tensor [N, 3, R, R] in [-1, 1], cached in the run folder, and the
    per-face sampling weights that draw each ``balance_by`` group equally often (None: uniform)."""
    tag = "" if cfg.framing == "haar" else f"_{cfg.framing}{cfg.align_scale:g}"
    cache = os.path.join(run_dir, f"faces{cfg.resolution}{tag}.npz")
    if os.path.exists(cache):
        cached = np.load(cache, allow_pickle=False)
        images = cached["images"]
        groups = cached[cfg.balance_by] if cfg.balance_by and cfg.balance_by in cached else None
    else:
        t0 = time.time()
        prep = prepare_faces(cfg.data, cfg.resolution, held_out_share=cfg.held_out_share, framing=cfg.framing_spec())
        labels = {k: np.array([str(v) for v in vals]) for k, vals in (prep.labels or {}).items()}
        np.savez(cache, images=prep.images, ids=np.array(prep.ids), **labels)
        with open(os.path.join(run_dir, "dataset.json"), "w") as f:
            json.dump({"source": cfg.data, "framing": asdict(cfg.framing_spec()), "kept": len(prep.ids),
                       "dropped": prep.dropped, "held_out": prep.held_out}, f)
        print(f"prepared {len(prep.ids)} faces ({prep.dropped} dropped: no face, unreadable or grey; "
              f"{len(prep.held_out)} held out) in {time.time() - t0:.0f}s", flush=True)
        images = prep.images
        groups = labels.get(cfg.balance_by) if cfg.balance_by else None
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0, None if groups is None else group_weights(groups)


def group_weights(groups: np.ndarray) -> torch.Tensor:
    """Per-item weights under which every distinct group value is drawn equally often."""
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    return torch.from_numpy(1.0 / counts[inverse]).double()


def stable_level(trainer: Trainer) -> int:
    """The highest resolution level that is fully faded in."""
    level, alpha, _ = trainer.schedule.at(trainer.cur_img)
    return level if alpha >= 1.0 else level - 1


def export(trainer: Trainer, path: str, level: int | None = None, gaussian_samples: int = 1_000_000) -> str:
    """EMA synthesis (up to ``level``) + mapping + PULSE's gaussian fit -> one checkpoint (fp16 weights).

    A lower level than the network's top gives a smaller generator whose RGB head is that
    level's training head, e.g. a 32 px generator while 64 px is still being grown.
    """
    g = trainer.G_ema
    level = stable_level(trainer) if level is None else level
    resolution = 2 ** (level + 1)
    sd = {k: v for k, v in g.synthesis.state_dict().items()
          if not k.startswith("torgb.") and (not k.startswith("blocks.") or int(k.split(".")[1].split("x")[0]) <= resolution)}
    head = g.rgb_head(level).state_dict()
    sd.update({f"torgb.{k}": v for k, v in head.items()})
    fit = compute_gaussian_fit(g.mapping, num_samples=gaussian_samples)
    name = Path(path).stem  # bundled generators are loaded by their file's stem
    meta = {"name": name, "resolution": resolution, "images_shown": trainer.cur_img,
            "config": asdict(trainer.cfg), "trained_with": "pulse-ray train (pulse_ray/train/loop.py)",
            "alignment": {"recipe": trainer.cfg.framing, "scale": trainer.cfg.align_scale}}
    save_checkpoint(path, sd, g.mapping.state_dict(), fit, meta, half=True)
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pulse-ray train", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=TrainConfig.data, help="faces: .parquet, folder or s3:// prefix")
    p.add_argument("--run-dir", default="runs/colour64", help="where state, samples and logs go")
    p.add_argument("--resume", action="store_true", help="continue from RUN/state.pt")
    p.add_argument("--minutes", type=float, default=60.0, help="stop (and save) after this long")
    p.add_argument("--kimg", type=float, default=None, help="stop once this many thousand images were shown")
    p.add_argument("--save-every", type=float, default=5.0, help="minutes between checkpoints")
    p.add_argument("--sample-every", type=float, default=5.0, help="minutes between sample grids")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--export", default=None, help="write the EMA generator checkpoint here at the end")
    p.add_argument("--export-level", type=int, default=None,
                   help="resolution level to export (2 = 8 px ... 5 = 64 px); default: highest fully grown")
    p.add_argument("--reset-ema", action="store_true", help="on resume, restart the EMA from the current weights")
    p.add_argument("--export-only", action="store_true", help="export RUN/state.pt to --export without training")
    p.add_argument("--fit-samples", type=int, default=1_000_000, help="latents for the exported gaussian fit")
    p.add_argument("--config", default=None, help="JSON file overriding TrainConfig fields")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":  # small fixed shapes: let cuDNN pick its kernels; TF32 matmuls
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    os.makedirs(args.run_dir, exist_ok=True)
    state_path = os.path.join(args.run_dir, "state.pt")
    cfg = TrainConfig(data=args.data)
    from_state = (args.resume or args.export_only) and os.path.exists(state_path)
    if from_state:
        saved = torch.load(state_path, map_location="cpu", weights_only=True)["config"]
        cfg = TrainConfig(**{**saved, "data": args.data})
    if args.config:  # overrides, e.g. a longer schedule for a resumed run
        with open(args.config) as f:
            cfg = TrainConfig(**{**asdict(cfg), **json.load(f)})
    trainer = Trainer(cfg, args.run_dir, device)
    if from_state:
        trainer.load(state_path)
        if args.reset_ema:
            trainer.G_ema.load_state_dict(trainer.G.state_dict())
        print(f"resumed at {trainer.cur_img} images", flush=True)
    if args.export_only:
        if not (args.export and from_state):
            p.error("--export-only needs --export PATH and an existing RUN/state.pt")
        name = export(trainer, args.export, level=args.export_level, gaussian_samples=args.fit_samples)
        print(f"exported {name} ({trainer.cur_img} images shown) to {args.export}", flush=True)
        return 0
    data, weights = load_dataset(cfg, args.run_dir)
    data = data.to(device)
    n = data.shape[0]
    gen = torch.Generator()

    stop_requested = []
    signal.signal(signal.SIGTERM, lambda *_: stop_requested.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop_requested.append(True))
    t_start = last_save = last_sample = last_log = time.time()
    img_at_log = img_at_start = trainer.cur_img
    tty = sys.stdout.isatty()
    stop_img = args.kimg * 1000 if args.kimg else None
    while True:
        level, alpha, batch = trainer.schedule.at(trainer.cur_img)
        gen.manual_seed(cfg.seed * 1_000_003 + trainer.step)  # per step, so --resume continues exactly
        if weights is None:
            idx = torch.randint(0, n, (batch,), generator=gen)
        else:
            idx = torch.multinomial(weights, batch, replacement=True, generator=gen)
        if device.type == "cuda":  # from pinned memory the copy does not wait for the GPU to finish
            idx = idx.pin_memory().to(device, non_blocking=True)
        reals = data[idx]
        if torch.rand((), generator=gen) < 0.5:
            reals = reals.flip(3)
        factor = cfg.resolution // 2 ** (level + 1)
        if factor > 1:
            reals = F.avg_pool2d(reals, factor)
        if alpha < 1.0:  # fade the new resolution in on the real side too
            reals = torch.lerp(F.interpolate(F.avg_pool2d(reals, 2), scale_factor=2.0, mode="nearest"), reals, alpha)
        losses = trainer.train_step(reals, level, alpha)
        now = time.time()
        if now - last_log >= (1 if tty else 30):
            rate = (trainer.cur_img - img_at_log) / (now - last_log)
            done_share = max((now - t_start) / 60 / args.minutes if args.minutes > 0 else 1.0,
                             (trainer.cur_img - img_at_start) / max(1, stop_img - img_at_start) if stop_img else 0.0)
            line = (f"{progress_bar(done_share, now - t_start)} | it {trainer.step} | kimg {trainer.cur_img / 1000:.1f} "
                    f"| {2 ** (level + 1)}px alpha {alpha:.2f} | D {losses['d'].item():.3f} G {losses['g'].item():.3f} "
                    f"R1 {losses['r1'].item():.3f} | {rate:.1f} img/s")
            print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
            last_log, img_at_log = now, trainer.cur_img
        done = bool(stop_requested) or (now - t_start) / 60 >= args.minutes or (
            stop_img is not None and trainer.cur_img >= stop_img)
        if done or (now - last_sample) / 60 >= args.sample_every:
            trainer.sample_grid(level, alpha, os.path.join(args.run_dir, "samples.png"))
            trainer.sample_grid(level, alpha, os.path.join(args.run_dir, f"samples_{trainer.cur_img // 1000:06d}k.png"))
            last_sample = now
        if done or (now - last_save) / 60 >= args.save_every:
            trainer.save()
            last_save = now
        if done:
            break
    if tty:
        print()  # end the progress line
    print(f"saved {state_path} at {trainer.cur_img} images", flush=True)
    if args.export:
        export(trainer, args.export, level=args.export_level, gaussian_samples=args.fit_samples)
        print(f"exported {args.export}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
