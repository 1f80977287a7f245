"""Nodes that exist only in the tests: graph shapes real users build with other packs, made from ComfyUI's
own pieces (its interrupt, its sampler, its graph expansion), to drive the pack's provenance rules."""

from __future__ import annotations


class InterruptAt:
    """MODEL → MODEL that interrupts sampling (ComfyUI's own interrupt flag) at the n-th model evaluation."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "evaluation": ("INT", {"default": 2, "min": 1})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "testing"

    def patch(self, model, evaluation):
        import comfy.model_management

        m = model.clone()
        count = {"n": 0}

        def wrapper(executor, *args, **kwargs):
            count["n"] += 1
            if count["n"] >= evaluation:
                comfy.model_management.interrupt_current_processing(True)
            return executor(*args, **kwargs)

        m.add_wrapper_with_key("predict_noise", "af_test_interrupt", wrapper)
        return (m,)


class SampleTwice:
    """A multi-pass sampler in one node (like tiled upscalers): two comfy.sample runs, the second refining."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent_image": ("LATENT",), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "testing"

    def sample(self, model, positive, negative, latent_image, seed):
        import nodes

        first = nodes.common_ksampler(model, seed, 2, 5.0, "euler", "normal", positive, negative, latent_image)[0]
        return nodes.common_ksampler(model, seed + 1, 2, 5.0, "euler", "normal", positive, negative, first,
                                     denoise=0.5)


class SamplerGroup:
    """A node that expands into a stock KSampler (ComfyUI's graph expansion, as group/subgraph packs do)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent_image": ("LATENT",), "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "expand"
    CATEGORY = "testing"

    def expand(self, model, positive, negative, latent_image, seed):
        from comfy_execution.graph_utils import GraphBuilder

        g = GraphBuilder()
        k = g.node("KSampler", model=model, positive=positive, negative=negative, latent_image=latent_image,
                   seed=seed, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal", denoise=1.0)
        return {"result": (k.out(0),), "expand": g.finalize()}


NODES = {"AFTestInterruptAt": InterruptAt, "AFTestSampleTwice": SampleTwice, "AFTestSamplerGroup": SamplerGroup}
