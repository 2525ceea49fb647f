"""The PULSE latent search: planted solutions, batch invariance, per-sample eps, bad input."""

import pytest
import torch

import pulse_ray
from pulse_ray.search.optim import BatchedSphericalOptimizer, lr_factor, sphere_norm

from .helpers import small_generator


def planted(g, n, factor, seed=1):
    """LR images that are exact downscales of generator outputs for known latents."""
    torch.manual_seed(seed)
    w = g.latents_from_prior(torch.randn(n, 1, 512)).expand(-1, g.num_layers, -1)
    with torch.no_grad():
        hr = (g.synthesize(w, [torch.zeros(s) for s in g.synthesis.noise_shapes(n)]) + 1) / 2
    return pulse_ray.downscale(hr, factor)


@pytest.mark.slow
def test_planted_solution_on_reference_small_network(reference):
    g = small_generator(reference)
    lr = planted(g, 2, factor=8)
    res = pulse_ray.upsample(lr, g, restarts=2, steps=100, early_stop=False, seed=0)
    for r in res:
        assert r.downscale_mse < 1e-2
        assert r.image.shape == (3, 128, 128)
        # the reported error is the error of the returned image
        assert r.converged is (r.downscale_mse <= 2e-3)


def test_results_do_not_depend_on_the_batch(reference):
    g = small_generator(reference)
    lr = planted(g, 3, factor=8)
    ids = ["a", "b", "c"]
    kw = dict(restarts=2, steps=6, early_stop=False, deterministic=True)
    together = pulse_ray.upsample(lr, g, ids=ids, **kw)
    alone = pulse_ray.upsample(lr[1:2], g, ids=["b"], **kw)
    one_slot = pulse_ray.upsample(lr[1:], g, ids=["b", "c"], batch_size=1, **kw)
    for other in (alone[0], one_slot[0]):
        assert other.seed == together[1].seed and other.restart == together[1].restart
        assert other.downscale_mse == pytest.approx(together[1].downscale_mse, rel=1e-5)
        assert (other.image - together[1].image).abs().max().item() < 1e-4
    assert one_slot[1].downscale_mse == pytest.approx(together[2].downscale_mse, rel=1e-5)


def test_a_lone_search_is_one_row_unless_deterministic(reference, monkeypatch):
    g = small_generator(reference)
    lr = planted(g, 1, factor=8)
    batches = []
    synthesize = g.synthesis.forward
    monkeypatch.setattr(g.synthesis, "forward", lambda w, noise: batches.append(len(w)) or synthesize(w, noise))
    fast = pulse_ray.upsample(lr, g, restarts=1, steps=3)[0]
    assert batches == [1, 1, 1]
    batches.clear()
    exact = pulse_ray.upsample(lr, g, restarts=1, steps=3, deterministic=True)[0]
    assert batches == [2, 2, 2]
    # without deterministic only the rounding of the batch-1 kernels differs
    assert (fast.image - exact.image).abs().max().item() < 1e-3
    assert fast.downscale_mse == pytest.approx(exact.downscale_mse, rel=1e-3)


def test_successive_halving_stops_the_losing_half_once_one_restart_is_within_eps(reference):
    g = small_generator(reference)
    lr = planted(g, 2, factor=32)  # 4x4: within eps after a few steps
    kw = dict(restarts=4, steps=10, eps=5e-2, early_stop=False, save_restarts=True, halving="0.4,0.7")
    res = pulse_ray.upsample(lr, g, **kw)
    full = pulse_ray.upsample(lr, g, **{**kw, "halving": ""})
    for r, f in zip(res, full):
        # two stop at step 4, one more at step 7 (the worse of the two left)
        assert sorted(x.steps for x in r.restarts) == [4, 4, 7, 10]
        assert all(x.steps == 10 for x in f.restarts)
        # the survivors ranked ahead at each checkpoint, and a kept rank only improves: the last one wins
        assert r.converged and r.restart == max(r.restarts, key=lambda x: x.steps).restart
        assert r.loss == min(x.loss for x in r.restarts if x.converged)
        # the survivor's search is the one it would have been without halving (same seed, same steps)
        same = next(x for x in f.restarts if x.restart == r.restart)
        assert r.seed == same.seed and r.downscale_mse == pytest.approx(same.downscale_mse, rel=1e-5)
    # nothing within eps: every restart could still converge, none is stopped
    hard = pulse_ray.upsample(lr, g, **{**kw, "eps": 1e-9})
    assert all(x.steps == 10 for r in hard for x in r.restarts)


def test_successive_halving_does_not_depend_on_the_batch(reference):
    """Searches that reach a checkpoint before their siblings are parked and resumed exactly."""
    g = small_generator(reference)
    lr = planted(g, 3, factor=32)
    kw = dict(restarts=3, steps=8, eps=5e-2, early_stop=False, save_restarts=True, deterministic=True)
    together = pulse_ray.upsample(lr, g, **kw)
    for bs in (1, 2):
        other = pulse_ray.upsample(lr, g, batch_size=bs, **kw)
        for a, b in zip(together, other):
            assert [(x.restart, x.steps) for x in a.restarts] == [(x.restart, x.steps) for x in b.restarts]
            assert b.restart == a.restart and torch.equal(a.image, b.image)
    assert any(x.steps < 8 for r in together for x in r.restarts)
    with pytest.raises(ValueError, match="--halving fractions must be increasing"):
        pulse_ray.upsample(lr, g, steps=2, halving="0.7,0.4")


def test_restarts_differ_and_the_best_is_returned(reference):
    g = small_generator(reference)
    lr = planted(g, 1, factor=8)
    with pytest.warns(DeprecationWarning, match="keep_restarts= is deprecated; use save_restarts="):
        # the old spelling still works
        res = pulse_ray.upsample(lr, g, restarts=3, steps=4, keep_restarts=True, early_stop=False, keep="closest")[0]
    assert [r.restart for r in res.restarts] == [0, 1, 2]
    assert len({r.seed for r in res.restarts}) == 3
    assert res.downscale_mse == min(r.downscale_mse for r in res.restarts)
    assert not torch.equal(res.restarts[0].image, res.restarts[1].image)


def test_keep_realistic_takes_the_lowest_loss_within_eps_and_closest_the_lowest_error(reference):
    g = small_generator(reference)
    lr = planted(g, 3, factor=32)  # 4x4: converges within a few steps, then GEOCROSS alone moves it
    kw = dict(restarts=3, steps=30, eps=5e-3, early_stop=False, save_restarts=True)
    realistic = pulse_ray.upsample(lr, g, keep="realistic", **kw)
    closest = pulse_ray.upsample(lr, g, keep="closest", **kw)
    for r, c in zip(realistic, closest):
        assert r.converged and c.converged and r.downscale_mse <= 5e-3
        # the same searches (same seeds, same steps): only the choice of iterate and restart differs
        assert [x.seed for x in r.restarts] == [x.seed for x in c.restarts]
        assert r.loss <= c.loss and c.downscale_mse <= r.downscale_mse
        assert r.restart == min((x for x in r.restarts if x.converged), key=lambda x: x.loss).restart
        assert c.restart == min(c.restarts, key=lambda x: x.downscale_mse).restart
    # the realism term went on falling after the closest iterate: the rules pick different images
    assert any(r.loss < c.loss for r, c in zip(realistic, closest))
    with pytest.raises(ValueError, match="unknown keep rule"):
        pulse_ray.upsample(lr, g, steps=1, keep="prettiest")


def test_best_iterate_not_last_and_unconverged_still_returned(reference):
    g = small_generator(reference)
    lr = torch.rand(1, 3, 16, 16)  # noise: no face, far from the generator's range
    res = pulse_ray.upsample(lr, g, restarts=1, steps=5, eps=1e-9)[0]
    assert res.converged is False
    assert res.image.shape == (3, 128, 128)
    assert res.steps == 5
    # with a fixed lr, a k-step search visits the first k iterates of a longer one: the
    # returned error must never rise with k (it would, were the last iterate returned)
    errors = [pulse_ray.upsample(lr, g, restarts=1, steps=k, eps=1e-9, lr_schedule="fixed")[0].downscale_mse
              for k in range(1, 7)]
    assert all(b <= a for a, b in zip(errors, errors[1:]))


def test_per_sample_eps_and_early_stop(reference):
    """An easy image converges and stops early; a hard one in the same batch runs on."""
    g = small_generator(reference)
    easy = planted(g, 1, factor=32)[0]  # 4x4: reaches ~2e-3 in 30 steps
    hard = torch.rand(3, 16, 16)  # 16x16 noise: stays far above 5e-3
    kw = dict(restarts=1, steps=30, eps=5e-3, patience=2, keep="closest", deterministic=True)
    res = pulse_ray.upsample([easy, hard], g, **kw)
    assert res[0].converged and res[0].steps < 30
    assert not res[1].converged and res[1].steps == 30
    # the easy image's result is the same when it runs alone
    alone = pulse_ray.upsample([easy], g, **kw)[0]
    assert alone.steps == res[0].steps
    assert alone.downscale_mse == pytest.approx(res[0].downscale_mse, rel=1e-5)


def test_grey_and_rgba_inputs_are_converted(reference):
    g = small_generator(reference)
    grey = torch.rand(1, 16, 16)
    rgba = torch.cat([grey.expand(3, -1, -1), torch.ones(1, 16, 16)])
    a = pulse_ray.upsample([grey], g, restarts=1, steps=2, ids=["x"])[0]
    b = pulse_ray.upsample([rgba], g, restarts=1, steps=2, ids=["x"])[0]
    assert torch.equal(a.image, b.image)


@pytest.mark.parametrize("shape, match", [
    ((3, 16, 8), "square"),
    ((3, 24, 24), "power of two"),
    ((3, 128, 128), "divide the generator's resolution"),
    ((2, 16, 16), "channels"),
])
def test_bad_lr_sizes_give_clear_errors(reference, shape, match):
    g = small_generator(reference)
    with pytest.raises(ValueError, match=match):
        pulse_ray.upsample([torch.rand(shape)], g, restarts=1, steps=1)


def test_other_bad_inputs(reference):
    g = small_generator(reference)
    with pytest.raises(ValueError, match="8-bit"):
        pulse_ray.upsample(torch.randint(0, 256, (1, 3, 16, 16)).float(), g, steps=1)
    with pytest.raises(ValueError, match="NaN"):
        pulse_ray.upsample(torch.full((1, 3, 16, 16), float("nan")), g, steps=1)
    with pytest.raises(ValueError, match="unknown optimizer"):
        pulse_ray.upsample(torch.rand(1, 3, 16, 16), g, steps=1, optimizer="lbfgs")
    with pytest.raises(ValueError, match="unknown lr schedule"):
        pulse_ray.upsample(torch.rand(1, 3, 16, 16), g, steps=1, lr_schedule="cosine")
    with pytest.raises(ValueError, match="ids"):
        pulse_ray.upsample(torch.rand(2, 3, 16, 16), g, steps=1, ids=["only-one"])


def test_check_lr_size_lists_valid_sizes():
    assert pulse_ray.check_lr_size(8, 8, 64) == 8
    with pytest.raises(ValueError, match="32x32, 16x16, 8x8, 4x4, 2x2, 1x1"):
        pulse_ray.check_lr_size(12, 12, 64)


def test_search_without_gaussian_fit_is_refused(reference):
    from .helpers import small_synthesis

    g = pulse_ray.Generator(small_synthesis(reference))
    with pytest.raises(ValueError, match="gaussian_fit="):
        pulse_ray.upsample(torch.rand(1, 3, 16, 16), g, steps=1)
    with pytest.raises(ValueError, match="gaussian fit"):
        g.sample(1)


@pytest.mark.parametrize("name, opt_cls, kw", [
    ("adam", torch.optim.Adam, {}), ("sgd", torch.optim.SGD, {}),
    ("sgdm", torch.optim.SGD, {"momentum": 0.9}), ("adamax", torch.optim.Adamax, {}),
])
def test_batched_optimizers_match_torch_then_project(name, opt_cls, kw):
    """Our per-slot update rules equal torch's optimizers followed by PULSE's projection."""
    torch.manual_seed(0)
    start = torch.randn(3, 4, 8)
    ours_p = start.clone()
    ours = BatchedSphericalOptimizer(name, [ours_p], lr=0.1, schedule="linear1cycledrop", steps=10)
    ours.reset_slots(torch.arange(3))
    ref_p = start.clone().requires_grad_(True)
    ref = opt_cls([ref_p], lr=0.1, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda j: float(lr_factor("linear1cycledrop", torch.tensor([j]), 10)))
    radii = sphere_norm(start)
    for _ in range(6):
        g = torch.randn(3, 4, 8)
        ours.step([g], torch.arange(3))
        ref.zero_grad()
        ref_p.grad = g.clone()
        ref.step()
        sched.step()
        with torch.no_grad():
            ref_p.div_(sphere_norm(ref_p)).mul_(radii)
    assert torch.allclose(ours_p, ref_p.detach(), atol=1e-5)


@pytest.mark.slow
def test_planted_solution_on_bundled_generator():
    g = pulse_ray.load_generator()
    lr = planted(g, 2, factor=4).clamp(0, 1)  # an LR image is an image: values in [0, 1]
    res = pulse_ray.upsample(lr, g, restarts=2, steps=100, eps=2e-3, seed=0)
    for i, r in enumerate(res):
        assert r.converged and r.downscale_mse <= 2e-3
        # output_mse is the error of the image returned (clamped to [0, 1])
        mse = (pulse_ray.downscale(r.image[None], 4) - lr[i:i + 1]).pow(2).mean().item()
        assert mse == pytest.approx(r.output_mse, rel=1e-4, abs=1e-7)


def test_grey_lr_is_searched_and_returned_in_luminance(reference):
    g = small_generator(reference)
    colour = planted(g, 2, factor=8)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey_one_channel = (colour[:1] * luma).sum(1, keepdim=True)  # [1, 1, h, w]
    grey_rgb = grey_one_channel[0].expand(3, -1, -1)  # R = G = B
    res = pulse_ray.upsample([grey_one_channel[0], grey_rgb, colour[1]], g, restarts=2, steps=8, early_stop=False,
                             ids=["g", "g", "c"])  # same id: same seeds
    for r in res[:2]:
        assert r.grey
        assert torch.equal(r.image[0], r.image[1]) and torch.equal(r.image[1], r.image[2])  # returned grey
        # the reported error is that of the grey image against the grey input
        err = ((pulse_ray.downscale(r.image[None], 8) - grey_rgb[None]) ** 2).mean().item()
        assert err == pytest.approx(r.output_mse, rel=1e-4)
    assert res[0].downscale_mse == pytest.approx(res[1].downscale_mse, rel=1e-5)  # 1 channel == R=G=B
    assert not res[2].grey
    assert (res[2].image[0] - res[2].image[1]).abs().max() > 1e-3  # a colour input keeps its colour
