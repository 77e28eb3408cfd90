"""The tensor sets the benchmarks share: one large tensor, a ResNet-50's, many small ones."""

from __future__ import annotations

from harness import Settings


def resnet50_shapes(width: int = 64) -> list[tuple[int, ...]]:
    """The 161 parameter shapes of a ResNet-50 (torchvision layout), 25.6M floats at width 64."""
    shapes: list[tuple[int, ...]] = [(width, 3, 7, 7), (width,), (width,)]
    inplanes = width
    for planes, blocks in ((width, 3), (2 * width, 4), (4 * width, 6), (8 * width, 3)):
        for block in range(blocks):
            shapes += [(planes, inplanes, 1, 1), (planes,), (planes,),
                       (planes, planes, 3, 3), (planes,), (planes,),
                       (4 * planes, planes, 1, 1), (4 * planes,), (4 * planes,)]
            if block == 0:
                shapes += [(4 * planes, inplanes, 1, 1), (4 * planes,), (4 * planes,)]
            inplanes = 4 * planes
    return shapes + [(1000, inplanes), (1000,)]


def tensor_sets(settings: Settings) -> dict[str, list[tuple[int, ...]]]:
    """Label -> parameter shapes: bandwidth-bound, a real network's mix, dispatch-bound."""
    if settings.quick:
        return {"1 x 1M": [(2**20,)], "ResNet-50/4 (161 tensors)": resnet50_shapes(16),
                "100 x 100": [(100,)] * 100}
    return {"1 x 16M": [(16 * 2**20,)], "ResNet-50 (161 tensors)": resnet50_shapes(),
            "1000 x 100": [(100,)] * 1000}
