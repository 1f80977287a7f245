"""Every sampler model evaluation inside the step window counts; an extra guidance pass does not.

The expected number of evaluations is counted independently, by the test's own PREDICT_NOISE wrapper
(one call per sampler evaluation, ComfyUI's own hook point) on an unpatched run. The probability mass the
capture stores per pixel and layer must equal that number: each evaluation's softmax sums to 1.
"""

from __future__ import annotations

import pytest
import torch

MULTI = ["heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "restart", "euler"]


@pytest.fixture(scope="module")
def env(comfy):
    from harness import fixtures
    from harness import pack as cp

    mp = fixtures.tiny_unet_patcher("sd15")
    pos, neg = fixtures.random_conditioning("sd15", seed=1), fixtures.random_conditioning("sd15", seed=2)
    return fixtures, cp, mp, pos, neg


def _counted(model):
    """A clone whose sampler evaluations and model calls are counted (no Attention Focus code)."""
    m = model.clone()
    n = {"evaluations": 0, "model_calls": 0}

    def predict(executor, *args, **kwargs):
        n["evaluations"] += 1
        return executor(*args, **kwargs)

    def apply(executor, *args, **kwargs):
        n["model_calls"] += 1
        return executor(*args, **kwargs)

    m.add_wrapper_with_key("predict_noise", "test_count", predict)
    m.add_wrapper_with_key("apply_model", "test_count", apply)
    return m, n


def _mass(maps) -> list[torch.Tensor]:
    """Per captured layer: the probability mass per pixel (sum over the prompt's tokens) of the newest run."""
    return [grid.sum(1) for (uid, region, layer), grid in maps.last_run.store.sums.items()
            if maps.last_run.prompts[uid].branch == "positive"]


@pytest.mark.parametrize("sampler", MULTI)
def test_every_evaluation_of_multi_evaluation_samplers_counts(env, sampler):
    fixtures, cp, mp, pos, neg = env
    lat = torch.zeros(1, 4, 8, 8)
    plain, n = _counted(mp)
    fixtures.sample(plain, pos, neg, lat, seed=3, steps=3, cfg=5.0, sampler_name=sampler)
    assert n["evaluations"] >= 3
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    fixtures.sample(m, pos, neg, lat, seed=3, steps=3, cfg=5.0, sampler_name=sampler)
    meta = maps.result().meta
    assert meta["steps"] == meta["evaluations"] == n["evaluations"], (sampler, meta["steps"], n)
    for mass in _mass(maps):
        torch.testing.assert_close(mass, torch.full_like(mass, float(n["evaluations"])), rtol=1e-5, atol=1e-4)


def test_a_schedule_that_repeats_a_sigma_counts_each_evaluation(env):
    import comfy.sample
    import comfy.samplers

    fixtures, cp, mp, pos, neg = env
    lat = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([14.6, 3.0, 3.0, 1.0, 0.0])  # euler: 4 evaluations, two of them at σ = 3
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    with torch.inference_mode():
        noise = comfy.sample.prepare_noise(lat, 1)
        comfy.sample.sample_custom(m, noise, 5.0, comfy.samplers.sampler_object("euler"), sigmas, pos, neg, lat,
                                   disable_pbar=True, seed=1)
    assert maps.result().meta["evaluations"] == 4
    for mass in _mass(maps):
        torch.testing.assert_close(mass, torch.full_like(mass, 4.0), rtol=1e-5, atol=1e-4)


def test_extra_guidance_passes_are_not_counted(env):
    """Perturbed-Attention Guidance runs the positive prompt a second time inside each evaluation."""
    from comfy_extras.nodes_pag import PerturbedAttentionGuidance

    fixtures, cp, mp, pos, neg = env
    lat = torch.zeros(1, 4, 8, 8)
    m, maps = cp.add_capture(mp, "all", "positive", 0.0, 1.0, "mean")
    pag = PerturbedAttentionGuidance.execute(model=m, scale=3.0).args[0]
    counted, n = _counted(pag)
    fixtures.sample(counted, pos, neg, lat, seed=3, steps=3, cfg=5.0, sampler_name="heun")
    assert n["model_calls"] > n["evaluations"] == 5  # heun, 3 steps; PAG adds one call per evaluation
    assert maps.result().meta["evaluations"] == n["evaluations"]
    for mass in _mass(maps):
        torch.testing.assert_close(mass, torch.full_like(mass, float(n["evaluations"])), rtol=1e-5, atol=1e-4)
