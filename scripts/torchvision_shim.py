"""Lets PyPI's torchvision import beside the CPU build of torch in the *test* environment only.

PyPI's torchvision wheel carries a CUDA ``_C.so`` that cannot load beside torch's CPU build, and one
unguarded module line registers fake kernels for ``torchvision::nms``/``qnms``. Defining those two
operator schemas before ``import torchvision`` lets its Python parts import (ComfyUI imports torchvision
at module level but never calls its C++ ops on the SD paths). scripts/setup_env.sh installs this file
with a ``.pth`` line into the cached venv it creates; it is never part of the node pack.
"""

import importlib.abc
import sys


class _TorchvisionShim(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        import torch

        lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            try:
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass
        _keep.append(lib)
        return None


_keep: list = []
if not any(isinstance(f, _TorchvisionShim) for f in sys.meta_path):
    sys.meta_path.insert(0, _TorchvisionShim())
