"""Trivial predictions of target views, the floor that a reconstruction must clear."""

from torch import Tensor


def mean_color_baseline(context_images: Tensor, num_targets: int) -> Tensor:
    """Every target pixel gets the mean color of the context views.
    context_images [B, V, 3, H, W] -> [B, num_targets, 3, H, W]."""
    B, _, C, H, W = context_images.shape
    mean = context_images.mean(dim=(1, 3, 4))  # [B, 3]
    return mean[:, None, :, None, None].expand(B, num_targets, C, H, W)


def nearest_view_baseline(context_images: Tensor, context_c2w: Tensor, target_c2w: Tensor) -> Tensor:
    """Each target copies the context view whose camera center is nearest.
    context_images [B, V, 3, H, W], context_c2w [B, V, 4, 4], target_c2w [B, T, 4, 4] -> [B, T, 3, H, W]."""
    distances = (target_c2w[:, :, None, :3, 3] - context_c2w[:, None, :, :3, 3]).norm(dim=-1)  # [B, T, V]
    nearest = distances.argmin(dim=-1)  # [B, T]
    return context_images.gather(1, nearest[..., None, None, None].expand(-1, -1, *context_images.shape[2:]))
