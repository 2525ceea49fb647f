"""Spherical projected optimizers over a batch of independent searches ("slots").

Each slot has its own step count and state, so a finished search can leave the batch and a new
one take its place without touching the others. The update rules are torch's Adam, SGD,
SGD with momentum 0.9 and Adamax (default hyper-parameters), applied elementwise; after each
step every latent vector (and every trainable noise map) is projected back onto the sphere of
its initial radius, as PULSE's ``SphericalOptimizer`` does.
"""

from __future__ import annotations

import torch

OPTIMIZERS = ("adam", "sgd", "sgdm", "adamax")
LR_SCHEDULES = ("fixed", "linear1cycle", "linear1cycledrop")


def lr_factor(schedule: str, step: torch.Tensor, steps: int) -> torch.Tensor:
    """PULSE's learning-rate schedules, evaluated at each slot's step (0-based)."""
    x = step.double()
    if schedule == "fixed":
        return torch.ones_like(x)
    if schedule == "linear1cycle":
        return (9 * (1 - (x / steps - 0.5).abs() * 2) + 1) / 10
    if schedule == "linear1cycledrop":
        cycle = (9 * (1 - (x / (0.9 * steps) - 0.5).abs() * 2) + 1) / 10
        drop = 1 / 10 + (x - 0.9 * steps) / (0.1 * steps) * (1 / 1000 - 1 / 10)
        return torch.where(x < 0.9 * steps, cycle, drop)
    raise ValueError(f"unknown lr schedule {schedule!r} (known: {', '.join(LR_SCHEDULES)})")


def sphere_norm(t: torch.Tensor) -> torch.Tensor:
    """Norm over all dims after the first two (one radius per [slot, vector])."""
    return (t.pow(2).sum(dim=tuple(range(2, t.dim())), keepdim=True) + 1e-9).sqrt()


class BatchedSphericalOptimizer:
    """Optimizes a list of tensors shaped ``[S, ...]``; row ``s`` belongs to slot ``s``."""

    def __init__(self, name: str, params: list[torch.Tensor], lr: float, schedule: str, steps: int):
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r} (known: {', '.join(OPTIMIZERS)})")
        self.name, self.params, self.lr, self.schedule, self.steps = name, params, lr, schedule, steps
        lr_factor(schedule, torch.zeros(1), steps)  # validates the schedule name
        slots = params[0].shape[0]
        self.step_count = torch.zeros(slots, dtype=torch.long)
        self.radii = [torch.zeros_like(sphere_norm(p)) for p in params]
        self.state = [[torch.zeros_like(p) for p in params] for _ in range(self._num_buffers())]

    def _num_buffers(self) -> int:
        return {"sgd": 0, "sgdm": 1, "adam": 2, "adamax": 2}[self.name]

    def reset_slots(self, rows: torch.Tensor) -> None:
        """Start fresh searches in ``rows`` (their params already written): zero state, new radii."""
        self.step_count[rows] = 0
        for p, r in zip(self.params, self.radii):
            r[rows] = sphere_norm(p[rows])
        for bufs in self.state:
            for b in bufs:
                b[rows] = 0

    def slot_state(self, slot: int) -> dict:
        """Copies of everything slot ``slot``'s search keeps here (to park it and resume it elsewhere)."""
        return {"step": self.step_count[slot].clone(), "radii": [r[slot].clone() for r in self.radii],
                "state": [[b[slot].clone() for b in bufs] for bufs in self.state]}

    def load_slot(self, slot: int, st: dict) -> None:
        """Put a parked search's state (from :meth:`slot_state`) into slot ``slot``."""
        self.step_count[slot] = st["step"]
        for r, v in zip(self.radii, st["radii"]):
            r[slot] = v
        for bufs, vals in zip(self.state, st["state"]):
            for b, v in zip(bufs, vals):
                b[slot] = v

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor], rows: torch.Tensor) -> None:
        """One update of the slots in ``rows`` (``grads`` are for those rows, in order; ``rows`` on any device)."""
        t = self.step_count[rows.cpu()]
        lr = (self.lr * lr_factor(self.schedule, t, self.steps)).to(self.params[0].device)
        t = (t + 1).to(self.params[0].device).double()
        for i, (p, g) in enumerate(zip(self.params, grads)):
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr_i = lr.view(shape).to(p.dtype)
            x = p[rows]
            if self.name == "sgd":
                x = x - lr_i * g
            elif self.name == "sgdm":
                buf = self.state[0][i]
                first = (t == 1).view(shape)
                b = torch.where(first, g, 0.9 * buf[rows] + g)
                buf[rows] = b
                x = x - lr_i * b
            elif self.name == "adam":
                m, v = self.state[0][i], self.state[1][i]
                m_r = 0.9 * m[rows] + 0.1 * g
                v_r = 0.999 * v[rows] + 0.001 * g * g
                m[rows], v[rows] = m_r, v_r
                bc1 = (1 - 0.9**t).view(shape).to(p.dtype)
                bc2 = (1 - 0.999**t).view(shape).to(p.dtype)
                x = x - (lr_i / bc1) * m_r / (v_r.sqrt() / bc2.sqrt() + 1e-8)
            else:  # adamax
                m, u = self.state[0][i], self.state[1][i]
                m_r = 0.9 * m[rows] + 0.1 * g
                u_r = torch.maximum(0.999 * u[rows], g.abs() + 1e-8)
                m[rows], u[rows] = m_r, u_r
                bc1 = (1 - 0.9**t).view(shape).to(p.dtype)
                x = x - (lr_i / bc1) * m_r / u_r
            p[rows] = x / sphere_norm(x) * self.radii[i][rows]
        self.step_count[rows.cpu()] += 1
