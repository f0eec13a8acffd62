"""Module paths of the flat layout before 0.2, for runs written then.

A run's config.yml names its classes by module path (`!!python/object:ilrm_nerfstudio.ilrm_model.
ILRMModelConfig`), and nerfstudio's tools (ns-eval, ns-export, ns-render, ns-viewer) and
`--pipeline.model.ilrm-run` load it with PyYAML, which imports that path. Each old path below
resolves to a module that looks its names up in the modules that hold them now.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types

# old module -> the modules that now hold its public names, searched in order
LEGACY_MODULES = {
    "ilrm_nerfstudio.ilrm_config": ("ilrm_nerfstudio.nerfstudio.method_configs",),
    "ilrm_nerfstudio.ilrm_model": ("ilrm_nerfstudio.nerfstudio.ilrm_model", "ilrm_nerfstudio.nerfstudio.scene_model"),
    "ilrm_nerfstudio.finetune": (
        "ilrm_nerfstudio.nerfstudio.finetune_model",
        "ilrm_nerfstudio.nerfstudio.finetune_pipeline",
    ),
    "ilrm_nerfstudio.ilrm_pipeline": ("ilrm_nerfstudio.nerfstudio.ilrm_pipeline",),
    "ilrm_nerfstudio.ilrm_datamanager": ("ilrm_nerfstudio.nerfstudio.ilrm_datamanager",),
    "ilrm_nerfstudio.scene_datamanager": ("ilrm_nerfstudio.nerfstudio.finetune_datamanager",),
    "ilrm_nerfstudio.optim": ("ilrm_nerfstudio.nerfstudio.optim",),
    "ilrm_nerfstudio.network": ("ilrm_nerfstudio.core.network",),
}


class _LegacyModule(types.ModuleType):
    def __getattr__(self, name: str):
        for target in LEGACY_MODULES[self.__name__]:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError:
                continue
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(
            f"{name!r} is not in {self.__name__} (moved to {', '.join(LEGACY_MODULES[self.__name__])})"
        )


class _LegacyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in LEGACY_MODULES:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return _LegacyModule(spec.name)

    def exec_module(self, module):
        pass


def install() -> None:
    if not any(isinstance(finder, _LegacyFinder) for finder in sys.meta_path):
        sys.meta_path.append(_LegacyFinder())
