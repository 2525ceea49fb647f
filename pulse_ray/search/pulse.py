"""The PULSE latent search, batched: every restart of every image runs in one generator batch.

Each (image, restart) pair is an independent *search* with its own seed, optimizer state and
step count. Searches fill a fixed number of *slots*; when one finishes (all steps, or converged
and no longer improving when ``early_stop`` is on) its slot is refilled at once from the queue
(continuous batching). Losses are per sample, so an image's result does not depend on what else
is in the batch.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import torch

from ..models.generator import Generator, load_generator
from ..sizes import check_lr_size, valid_lr_sizes  # noqa: F401  (re-exported)
from .downscale import downscale
from .losses import l2_per_sample, loss_per_sample, parse_loss
from .optim import BatchedSphericalOptimizer
from .options import KEEP_RULES, NOISE_TYPES, PRECISIONS, SearchOptions, halving_fractions  # noqa: F401

#: ITU-R 601 luma weights: a grey LR input is matched, and its result returned, in this luminance
LUMA = (0.299, 0.587, 0.114)
#: channels that agree to within 8-bit rounding make an RGB input grey
GREY_TOLERANCE = 1.5 / 255


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """``None`` -> ``"tf32"`` on CUDA, ``"fp32"`` elsewhere; TF32 on a CPU is refused. ``"bf16"`` runs the
    generator forward under bf16 autocast on either device (the loss and the optimizer stay fp32)."""
    if precision is None:
        return "tf32" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"precision='tf32' needs a CUDA device; the generator is on {device.type} "
                         f"(use precision='fp32', 'bf16' or None)")
    return precision


@contextlib.contextmanager
def _cuda_fp32_mode(precision: str, device: torch.device):
    """TF32 on or off for CUDA matmuls and convolutions while the search runs (restored after)."""
    if device.type != "cuda":
        yield
        return
    tf32 = precision in ("tf32", "bf16")
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9: the new API only (torch
        # refuses to read the legacy allow_tf32 flags while they disagree with it; restoring makes them agree)
        flags = (torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn)
        saved = [f.fp32_precision for f in flags]
        for f in flags:
            f.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            for f, v in zip(flags, saved):
                f.fp32_precision = v
    else:
        saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _synthesis_fn(g: Generator, precision: str, compile: bool):
    """The generator forward the search calls: compiled and/or under bf16 autocast when asked."""
    net = g.synthesis
    if compile:
        # compiled once per generator (and kept on it): later searches reuse the compiled code
        cached = g.__dict__.get("_compiled_synthesis")
        if cached is None or cached[0] is not net:
            cached = (net, torch.compile(net))
            g.__dict__["_compiled_synthesis"] = cached
        net = cached[1]
    if precision != "bf16":
        return net

    def forward(w, noise):
        with torch.autocast(device_type=w.device.type, dtype=torch.bfloat16):
            out = net(w, noise)
        return out.float()

    return forward


@dataclass
class SearchResult:
    """The outcome of one image (or one restart of it)."""

    image: torch.Tensor  # [3, R, R] in [0, 1], the best iterate
    downscale_mse: float  # PULSE's L2: MSE between DS(G(z)) and the LR input, G(z) before clamping
    output_mse: float  # the same for the image returned (clamped to [0, 1]); larger when G(z) left [0, 1]
    converged: bool  # downscale_mse <= eps
    loss: float  # the search's total loss at that iterate (L2 / L1 clamped at eps): lower is more realistic
    restart: int  # which restart produced it
    steps: int  # optimizer steps that restart ran
    seed: int  # the seed of that restart's search
    restarts: list = field(default_factory=list)  # per-restart results with save_restarts=True
    grey: bool = False  # the LR input was grey: searched and returned in luminance (R = G = B)


def search_seed(seed: int, key: str, restart: int) -> int:
    """A 63-bit seed from (seed, image id, restart), independent of batching and workers."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{restart}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def is_grey(img: torch.Tensor) -> bool:
    """A ``[3, h, w]`` image whose channels agree to within 8-bit rounding."""
    return bool((img.amax(0) - img.amin(0)).max() <= GREY_TOLERANCE)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` -> the same shape, every channel the ITU-R 601 luma."""
    w = images.new_tensor(LUMA).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True).expand_as(images)


def _prepare_lr(img: torch.Tensor, index: int) -> torch.Tensor:
    if not torch.is_tensor(img) or img.dim() != 3:
        raise ValueError(f"LR image {index}: expected a [C, h, w] tensor, got "
                         f"{list(img.shape) if torch.is_tensor(img) else type(img).__name__}")
    c = img.shape[0]
    if c == 1:
        img = img.expand(3, -1, -1)
    elif c == 4:
        img = img[:3]  # RGBA: colour channels only
    elif c != 3:
        raise ValueError(f"LR image {index}: {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    img = img.float()
    if not torch.isfinite(img).all():
        raise ValueError(f"LR image {index}: contains NaN or infinite values")
    if img.max() > 2.0 and img.min() >= 0 and (img == img.round()).all():
        raise ValueError(f"LR image {index}: integer values up to {img.max().item():.0f} look like 8-bit "
                         f"pixels; divide by 255 to get [0, 1]")
    return img


class _Searches:
    """Slot storage: latents, noise, optimizer, best iterate per slot."""

    def __init__(self, g: Generator, slots: int, o: SearchOptions):
        dev = g.device
        self.g = g
        n = 1 if o.tile_latent else g.num_layers
        self.latent = torch.zeros(slots, n, 512, device=dev)
        bad = {int(x) for x in str(o.bad_noise_layers).split(".") if x.strip() != ""}
        self.trainable, self.fixed_noise, self.noise_kind = [], [], []
        for i, shape in enumerate(g.synthesis.noise_shapes(slots)):
            if o.noise_type == "zero" or i in bad:
                kind = "zero"
            elif o.noise_type == "trainable" and i < o.num_trainable_noise_layers:
                kind = "trainable"
            else:
                kind = "fixed"
            self.noise_kind.append(kind)
            buf = torch.zeros(shape, device=dev)
            (self.trainable if kind == "trainable" else self.fixed_noise).append(buf)
        self.opt = BatchedSphericalOptimizer(o.optimizer, [self.latent, *self.trainable],
                                             o.learning_rate, o.lr_schedule, o.steps)
        self.best_mse = torch.full((slots,), float("inf"))
        self.best_loss = torch.full((slots,), float("inf"))  # total loss of the best iterate
        self.best_step = torch.zeros(slots, dtype=torch.long)
        # the best iterate stays on the generator's device: no image copied back every step
        self.best_image = torch.zeros(slots, 3, g.resolution, g.resolution, device=dev)

    def start(self, slot: int, seed: int) -> None:
        """Initialise slot ``slot`` for a new search drawn from ``seed`` (on the CPU, so any device agrees)."""
        gen = torch.Generator().manual_seed(seed)
        self.latent[slot] = torch.randn(self.latent.shape[1:], generator=gen).to(self.latent.device)
        ti = fi = 0
        for kind, shape in zip(self.noise_kind, self.g.synthesis.noise_shapes(1)):
            if kind == "zero":
                fi += 1
                continue
            sample = torch.randn(shape[1:], generator=gen).to(self.latent.device)
            if kind == "trainable":
                self.trainable[ti][slot] = sample
                ti += 1
            else:
                self.fixed_noise[fi][slot] = sample
                fi += 1
        self.opt.reset_slots(torch.tensor([slot]))
        self.best_mse[slot] = float("inf")
        self.best_loss[slot] = float("inf")
        self.best_step[slot] = 0

    def park(self, slot: int) -> dict:
        """Copies of slot ``slot``'s search (latent, noise, optimizer state, kept iterate)."""
        return {"latent": self.latent[slot].clone(), "trainable": [t[slot].clone() for t in self.trainable],
                "fixed": [f[slot].clone() for f in self.fixed_noise], "opt": self.opt.slot_state(slot),
                "best_mse": self.best_mse[slot].clone(), "best_loss": self.best_loss[slot].clone(),
                "best_step": self.best_step[slot].clone(), "best_image": self.best_image[slot].clone()}

    def resume(self, slot: int, st: dict) -> None:
        """Continue a parked search (from :meth:`park`) in slot ``slot``, exactly where it stopped."""
        self.latent[slot] = st["latent"]
        for t, v in zip(self.trainable, st["trainable"]):
            t[slot] = v
        for f, v in zip(self.fixed_noise, st["fixed"]):
            f[slot] = v
        self.opt.load_slot(slot, st["opt"])
        for name in ("best_mse", "best_loss", "best_step", "best_image"):
            getattr(self, name)[slot] = st[name]

    def noise_for(self, rows: torch.Tensor, trainable: list) -> list:
        out, ti, fi = [], 0, 0
        for kind in self.noise_kind:
            if kind == "trainable":
                out.append(trainable[ti])
                ti += 1
            else:
                out.append(self.fixed_noise[fi][rows])
                fi += 1
        return out


def halving_steps(o: SearchOptions) -> list[int]:
    """The step counts at which successive halving ranks an image's restarts."""
    return sorted({c for c in (round(f * o.steps) for f in halving_fractions(o.halving)) if 0 < c < o.steps})


def _rank(mse: float, loss: float, eps: float, keep: str) -> tuple:
    """Sort key of an iterate or a restart under ``keep`` (lower is better)."""
    if keep == "realistic" and mse <= eps:
        return (0, loss)
    return (1, mse)


def upsample(lr_batch, generator: Generator | str | None = None, options: SearchOptions | None = None, *,
             ids=None, **overrides) -> list[SearchResult]:
    """Super-resolve LR faces with PULSE; one :class:`SearchResult` per input image.

    ``lr_batch``: ``[B, C, h, w]`` in [0, 1] or a list of ``[C, h, w]`` (sizes may differ).
    The settings are a :class:`~pulse_ray.search.options.SearchOptions` (``options``), any field of
    which may also be given as a keyword (``restarts=2, steps=50``), overriding it.
    ``restarts`` independent searches per image, seeded from (``seed``, id, restart). Which iterate
    a search keeps, and which restart an image keeps, is ``keep``:
    - ``"realistic"`` (PULSE's rule): of the iterates that downscale to within ``eps``, the one with
      the lowest total loss, i.e. the lowest realism term (GEOCROSS), since L2 is clamped at ``eps``;
    - ``"closest"``: the iterate with the lowest downscale error, whatever its realism.
    Either way a search that never reached ``eps`` keeps its lowest-downscale-error iterate, and the
    result has ``converged=False`` when no restart reached ``eps``. ``early_stop`` lets a converged
    search whose kept iterate has not changed for ``patience`` steps leave the batch (under
    ``"realistic"`` the realism term usually falls to the last step, so it rarely stops a search
    early; ``"closest"`` searches stop soon after they converge); ``skip_converged_restarts`` drops
    an image's remaining restarts once one has converged. ``halving`` (default ``"0.4,0.7"``) stops
    the worse half of an image's restarts at those fractions of the steps, once one of them is within
    eps (a restart that gets there before its siblings is parked and resumed exactly, so the result
    does not depend on the batch). ``deterministic=True`` runs a search that is alone in the batch as
    two rows, so that even its rounding matches any batch it could have run in; by default it runs as
    one row (half the cost; its last bits may differ from a batched run's).

    Fast-path knobs: ``precision`` is ``"fp32"``, ``"tf32"`` (TF32 matmuls and convolutions) or
    ``"bf16"`` (the generator forward under bf16 autocast, TF32 elsewhere on CUDA; on a CPU too);
    ``None`` means ``"tf32"`` on CUDA and ``"fp32"`` on the CPU, where ``"tf32"`` is refused.
    ``compile=True`` runs the synthesis network through ``torch.compile`` (compiled once per
    generator object). Both change rounding, so results then agree with fp32 within tolerance rather
    than bit for bit, and are no longer guaranteed independent of the batch.
    """
    o = SearchOptions.from_kwargs(options, **overrides)
    g = generator if isinstance(generator, Generator) else load_generator(generator)
    g.require_gaussian_fit()
    precision = resolve_precision(o.precision, g.device)
    with _cuda_fp32_mode(precision, g.device):
        return _upsample(lr_batch, g, o, ids, synthesize=_synthesis_fn(g, precision, o.compile))


def _upsample(lr_batch, g: Generator, o: SearchOptions, ids, synthesize) -> list[SearchResult]:
    restarts, steps, eps, seed, keep = o.restarts, o.steps, o.eps, o.seed, o.keep
    images = list(lr_batch) if not torch.is_tensor(lr_batch) else list(lr_batch.unbind(0)) \
        if lr_batch.dim() == 4 else None
    if images is None:
        raise ValueError(f"lr_batch must be [B, C, h, w] or a list of [C, h, w], got shape {list(lr_batch.shape)}")
    keys = [str(k) for k in ids] if ids is not None else [str(i) for i in range(len(images))]
    if len(keys) != len(images):
        raise ValueError(f"{len(keys)} ids for {len(images)} images")
    if not images:
        return []
    terms = parse_loss(o.loss)
    refs, factors, grey = [], [], []
    for i, img in enumerate(images):
        img = _prepare_lr(img, i)
        factors.append(check_lr_size(img.shape[1], img.shape[2], g.resolution))
        grey.append(is_grey(img))
        refs.append((luminance(img[None])[0] if grey[-1] else img).to(g.device))

    queue = [(i, r, None) for i in range(len(images)) for r in range(restarts)]  # (image, restart, parked)
    slots = min(len(queue), o.batch_size or g.default_batch_size())
    s = _Searches(g, slots, o)
    owner: list = [None] * slots  # (image, restart, seed) per slot
    outcome = {}  # (image, restart) -> SearchResult
    converged_images = set()
    checkpoints = halving_steps(o) if restarts > 1 else []
    live = [set(range(restarts)) for _ in images]  # restarts neither finished, stopped nor skipped
    stopped = set()  # (image, restart) stopped by successive halving
    stage = [0] * len(images)  # index of each image's next halving checkpoint
    waiting = [{} for _ in images]  # restart -> its slot, or (seed, parked state): at that checkpoint

    def finish(i: int, r: int, sd: int, best_mse: float, best_loss: float, best_image, done_steps: int) -> None:
        conv = best_mse <= eps
        image = best_image.to("cpu", copy=True)
        out_mse = l2_per_sample(downscale(image[None].expand(2, -1, -1, -1), factors[i])[:1], refs[i][None].cpu())
        outcome[(i, r)] = SearchResult(image=image, downscale_mse=best_mse, output_mse=float(out_mse),
                                       converged=conv, loss=best_loss, restart=r, steps=done_steps, seed=sd,
                                       grey=grey[i])
        live[i].discard(r)
        if conv:
            converged_images.add(i)

    def finish_slot(k: int) -> None:
        i, r, sd = owner[k]
        finish(i, r, sd, float(s.best_mse[k]), float(s.best_loss[k]), s.best_image[k], int(s.opt.step_count[k]))
        owner[k] = None

    def fill(slot: int) -> None:
        while queue:
            i, r, parked = queue.pop(0)
            if parked is not None:
                s.resume(slot, parked[1])
                owner[slot] = (i, r, parked[0])
                return
            if o.skip_converged_restarts and i in converged_images:
                live[i].discard(r)
                continue
            sd = search_seed(seed, keys[i], r)
            s.start(slot, sd)
            owner[slot] = (i, r, sd)
            return
        owner[slot] = None

    def kept(i: int, r: int) -> tuple[float, float]:
        """(downscale MSE, loss) of the iterate restart ``r`` of image ``i`` keeps so far."""
        if (i, r) in outcome:
            return outcome[(i, r)].downscale_mse, outcome[(i, r)].loss
        where = waiting[i][r]
        if isinstance(where, int):
            return float(s.best_mse[where]), float(s.best_loss[where])
        return float(where[1]["best_mse"]), float(where[1]["best_loss"])

    def halve(i: int) -> bool:
        """Once every live restart of image ``i`` has reached its next checkpoint: stop the worse half
        (ranked with the finished ones, by the iterate each keeps), provided some restart is within eps
        (before that, any of them could still be the one that converges). False while still waiting."""
        if not waiting[i] or set(waiting[i]) != live[i]:
            return False
        group = {r: kept(i, r) for r in range(restarts) if (i, r) in outcome and (i, r) not in stopped}
        group.update({r: kept(i, r) for r in waiting[i]})
        losers = set()
        if len(group) > 1 and any(m <= eps for m, _ in group.values()):
            order = sorted(group, key=lambda r: (_rank(*group[r], eps, keep), r))
            losers = set(order[(len(order) + 1) // 2:]) & set(waiting[i])
        resumed = []
        for r, where in sorted(waiting[i].items()):
            if r in losers:
                stopped.add((i, r))
                if isinstance(where, int):
                    finish_slot(where)
                else:
                    st = where[1]
                    finish(i, r, where[0], float(st["best_mse"]), float(st["best_loss"]), st["best_image"],
                           int(st["opt"]["step"]))
            elif not isinstance(where, int):
                resumed.append((i, r, where))
        queue[:0] = resumed  # parked survivors take the next free slots
        stage[i] += 1
        waiting[i] = {}
        return True

    while True:
        while True:  # free slots take parked survivors, then new searches; a skipped restart can unblock a halving
            for k in range(slots):
                if owner[k] is None:
                    fill(k)
            if not [i for i in range(len(images)) if halve(i)]:
                break
        active = [k for k, o in enumerate(owner) if o is not None]
        if not active:
            break
        if len(active) == 1 and o.deterministic:
            # convolution kernels round differently at batch 1: run a lone search twice
            # (same slot) so its numbers match any other batch it could have run in
            active = active * 2
        rows = torch.tensor(active)
        rows_dev = rows.to(g.device)
        latent = s.latent[rows_dev].clone().requires_grad_(True)
        trainable = [t[rows_dev].clone().requires_grad_(True) for t in s.trainable]
        w = latent.expand(-1, g.num_layers, -1) if o.tile_latent else latent
        w = g.latents_from_prior(w)
        hr = (synthesize(w, s.noise_for(rows_dev, trainable)) + 1) / 2
        grey_rows = torch.tensor([grey[owner[k][0]] for k in active], device=hr.device)
        if grey_rows.any():  # a grey input is matched (and its result returned) in luminance
            hr = torch.where(grey_rows.view(-1, 1, 1, 1), luminance(hr), hr)
        total = hr.new_zeros(())
        mse = torch.zeros(len(active))
        totals = torch.zeros(len(active))
        for f in sorted({factors[owner[k][0]] for k in active}):
            members = [j for j, k in enumerate(active) if factors[owner[k][0]] == f]
            # deterministic: a group of one runs as two rows: kernels (convolutions, reductions) take
            # other code paths for a single row, and the numbers must not depend on the batch
            rows_f = members * 2 if len(members) == 1 and o.deterministic else members
            gen_lr = downscale(hr[rows_f], f)
            ref = torch.stack([refs[owner[active[j]][0]] for j in rows_f])
            per_sample, _ = loss_per_sample(terms, w[rows_f], gen_lr, ref, eps)
            total = total + per_sample[:len(members)].sum()
            mse[members] = l2_per_sample(gen_lr, ref).detach().cpu()[:len(members)]
            totals[members] = per_sample.detach().cpu()[:len(members)]
        grads = torch.autograd.grad(total, [latent, *trainable])
        # best iterate per slot (this step's image is the one before the update)
        step_now = s.opt.step_count[rows].clone()
        improved = torch.tensor([_rank(m, t, eps, keep) < _rank(bm, bt, eps, keep) for m, t, bm, bt in zip(
            mse.tolist(), totals.tolist(), s.best_mse[rows].tolist(), s.best_loss[rows].tolist())], dtype=torch.bool)
        if improved.any():
            idx = rows[improved]
            s.best_mse[idx] = mse[improved]
            s.best_loss[idx] = totals[improved]
            s.best_step[idx] = step_now[improved]
            s.best_image[idx.to(hr.device)] = hr.detach()[improved.to(hr.device)].clamp(0, 1).float()
        s.opt.step([gr.detach() for gr in grads], rows_dev)
        for k in sorted(set(active)):
            i, r, _ = owner[k]
            done_steps = int(s.opt.step_count[k])
            conv = bool(s.best_mse[k] <= eps)
            if done_steps >= steps or (o.early_stop and conv and done_steps - int(s.best_step[k]) > o.patience):
                finish_slot(k)
            elif stage[i] < len(checkpoints) and done_steps == checkpoints[stage[i]]:
                waiting[i][r] = k
        for i in range(len(images)):
            halve(i)
        for w_i in waiting:  # searches whose siblings have not reached the checkpoint yet leave their slots
            for r, where in list(w_i.items()):
                if isinstance(where, int):
                    w_i[r] = (owner[where][2], s.park(where))
                    owner[where] = None

    results = []
    for i in range(len(images)):
        runs = [outcome[(i, r)] for r in range(restarts) if (i, r) in outcome]
        best = min(runs, key=lambda x: _rank(x.downscale_mse, x.loss, eps, keep))
        results.append(SearchResult(image=best.image, downscale_mse=best.downscale_mse, output_mse=best.output_mse,
                                    converged=best.converged, loss=best.loss,
                                    restart=best.restart, steps=best.steps, seed=best.seed,
                                    restarts=runs if o.save_restarts else [], grey=grey[i]))
    return results
