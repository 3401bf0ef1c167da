"""CAM methods on synthetic activations: known identities, localisation, fusion and error handling (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.cam import (
    METHODS,
    MULTI_LAYER,
    compute_cam,
    eigencam,
    gradcam,
    gradcampp,
    hirescam,
    layercam,
    normalize,
    pool_to_cells,
    upsample,
    xgradcam,
)

SINGLE = sorted(set(METHODS) - MULTI_LAYER)
Arrays = tuple[np.ndarray, ...]


def gap_stage(rng: np.random.Generator, h: int = 8, w: int = 8, k: int = 16) -> Arrays:
    """Post-ReLU activations and the position-independent gradient of a layer feeding global average pooling."""
    acts = np.maximum(rng.normal(0.5, 1.0, (h, w, k)), 0).astype(np.float32)
    dense = rng.normal(0, 1, k).astype(np.float32)
    grads = np.broadcast_to(dense / (h * w), (h, w, k)).astype(np.float32)
    return acts, grads, dense


def blob_stage(rng: np.random.Generator, h: int, w: int, box: tuple[slice, slice], k: int = 8) -> Arrays:
    """Activations strong inside `box` (weak noise elsewhere) and positive gradients everywhere."""
    acts = rng.uniform(0, 0.05, (h, w, k)).astype(np.float32)
    acts[box] += rng.uniform(1.0, 2.0, k).astype(np.float32)
    grads = rng.uniform(0.5, 1.0, (h, w, k)).astype(np.float32)
    return acts, grads


def test_gap_layer_identities():
    acts, grads, dense = gap_stage(np.random.default_rng(0))
    ref = normalize(gradcam(acts, grads))
    assert ref.max() == 1.0
    np.testing.assert_allclose(gradcam(acts, grads), hirescam(acts, grads), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(normalize(hirescam(acts, grads)), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(normalize(xgradcam(acts, grads)), ref, rtol=1e-5, atol=1e-6)
    clipped = np.maximum(acts @ np.maximum(dense / 64, 0), 0)
    np.testing.assert_allclose(layercam(acts, grads), clipped, rtol=1e-5, atol=1e-7)
    assert not np.allclose(normalize(clipped), ref)  # the negative weights really mattered here


def test_gradcampp_closed_form_with_constant_gradient():
    rng = np.random.default_rng(1)
    acts = rng.uniform(0, 1, (4, 5, 3)).astype(np.float32)
    g = np.array([0.2, -0.3, 0.0], np.float32)
    grads = np.broadcast_to(g, acts.shape).astype(np.float32)
    s = acts.sum(axis=(0, 1))
    # alpha = g^2 / (2 g^2 + S g^3) = 1 / (2 + S g); w = sum_ij g * alpha; negative and zero channels drop out.
    weights = np.array([20 * 0.2 / (2 + s[0] * 0.2), 0.0, 0.0])
    expected = np.maximum(acts @ weights, 0)
    out = gradcampp(acts, grads)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fn", [gradcam, gradcampp, xgradcam, layercam, hirescam, eigencam])
def test_raw_maps_are_float32_non_negative(fn):
    rng = np.random.default_rng(2)
    acts = rng.normal(0, 1, (6, 7, 5)).astype(np.float32)
    grads = rng.normal(0, 1, (6, 7, 5)).astype(np.float32)
    out = fn(acts, grads)
    assert out.shape == (6, 7) and out.dtype == np.float32
    assert np.isfinite(out).all() and (out >= 0).all()


def test_gradcampp_zero_gradients_give_zero_map_without_nan():
    acts = np.ones((3, 3, 2), np.float32)
    out = gradcampp(acts, np.zeros_like(acts))
    assert np.isfinite(out).all() and not out.any()


@pytest.mark.parametrize("method", SINGLE)
def test_map_concentrates_where_activations_are(method):
    for seed in range(3):
        box = (slice(2, 4), slice(5, 7))
        acts, grads = blob_stage(np.random.default_rng(seed), 8, 8, box)
        cam = compute_cam(method, [(acts, grads)])
        assert cam.shape == (8, 8) and cam.dtype == np.float32
        assert cam.min() == 0.0 and cam.max() == pytest.approx(1.0)
        inside = np.zeros((8, 8), bool)
        inside[box] = True
        assert cam[inside].min() > cam[~inside].max(), method


def test_eigencam_ignores_gradients_and_sign_follows_activation():
    acts, grads = blob_stage(np.random.default_rng(3), 8, 8, (slice(0, 3), slice(0, 3)))
    a = eigencam(acts, grads)
    np.testing.assert_array_equal(a, eigencam(acts, -grads))
    assert a[:3, :3].min() > 10 * a[4:, 4:].max()
    np.testing.assert_array_equal(eigencam(-acts, grads), 0)  # oriented along the total activation, then relu


def test_eigencam_is_uncentred_so_it_keeps_every_activated_position():
    """The projection on the first right singular vector of A itself (the paper's), not of A minus its mean: centring
    and clipping would blank every below-average position, about half of a texture's map."""
    acts = np.random.default_rng(7).uniform(0.5, 1.5, (8, 8, 16)).astype(np.float32)
    out = eigencam(acts, acts)
    np.testing.assert_allclose(out, (acts @ _first_right_singular(acts)).astype(np.float32), rtol=1e-5)
    assert out.min() > 0.5 * out.max()


def _first_right_singular(acts: np.ndarray) -> np.ndarray:
    vector = np.linalg.svd(acts.reshape(-1, acts.shape[-1]).astype(np.float64), full_matrices=False)[2][0]
    return vector * np.sign(vector.sum())


def test_eigencam_constant_activations_are_blank():
    assert not compute_cam("eigencam", [(np.ones((4, 4, 3), np.float32), np.ones((4, 4, 3), np.float32))]).any()
    assert not eigencam(np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 3), np.float32)).any()


def test_normalize_flat_and_range():
    for flat in (np.zeros((5, 5)), np.full((5, 5), 3.7), np.full((5, 5), 1e-12)):
        out = normalize(flat)
        assert np.isfinite(out).all() and not out.any()
    np.testing.assert_allclose(normalize(np.array([[2.0, 4.0], [6.0, np.nan]])), [[1 / 3, 2 / 3], [1.0, 0.0]],
                               rtol=1e-6)
    np.testing.assert_allclose(normalize(np.array([[2.0, 4.0], [6.0, 10.0]])), [[0.0, 0.25], [0.5, 1.0]])
    assert np.isfinite(normalize(np.array([[np.nan, np.inf], [1.0, 2.0]]))).all()


def test_upsample_shape_and_clip():
    out = upsample(np.array([[0.0, 1.0], [1.0, 0.0]], np.float32), (16, 12))
    assert out.shape == (16, 12) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(upsample(np.full((3, 3), 2.0), (3, 3)), np.ones((3, 3)))


def test_layercam_fused_is_hi_res_and_inside_the_deep_evidence():
    rng = np.random.default_rng(4)
    coarse = blob_stage(rng, 8, 8, (slice(2, 4), slice(2, 4)))
    fine = blob_stage(rng, 16, 16, (slice(5, 7), slice(5, 7)), k=4)
    fused = compute_cam("layercam-fused", [coarse, fine])
    assert fused.shape == (16, 16) and fused.dtype == np.float32
    assert fused.max() == pytest.approx(1.0) and fused.min() == 0.0
    coarse_up = upsample(compute_cam("layercam", [coarse]), (16, 16))
    assert not fused[coarse_up == 0].any()  # nothing highlighted that the last stage does not support
    peak = np.unravel_index(np.argmax(fused), fused.shape)
    assert 5 <= peak[0] < 7 and 5 <= peak[1] < 7
    # Sharper than the coarse map alone: less area above half maximum.
    assert (fused > 0.5).sum() < (coarse_up > 0.5).sum()


def test_layercam_fused_falls_back_when_stages_disagree():
    rng = np.random.default_rng(5)
    coarse = blob_stage(rng, 4, 4, (slice(0, 1), slice(0, 1)))
    fine = blob_stage(rng, 8, 8, (slice(6, 8), slice(6, 8)))
    coarse[0][1:, :] = 0
    coarse[0][:, 1:] = 0
    fine[0][:6, :] = 0
    fine[0][:, :6] = 0
    fused = compute_cam("layercam-fused", [coarse, fine])
    assert np.isfinite(fused).all() and fused.max() == pytest.approx(1.0)
    assert fused[0, 0] > 0 and fused[7, 7] > 0  # both stages' evidence kept (mean), not a blank product


def test_single_layer_methods_ignore_the_second_stage():
    rng = np.random.default_rng(6)
    coarse = blob_stage(rng, 8, 8, (slice(1, 3), slice(1, 3)))
    fine = blob_stage(rng, 16, 16, (slice(9, 12), slice(9, 12)))
    np.testing.assert_array_equal(compute_cam("gradcam", [coarse, fine]), compute_cam("gradcam", [coarse]))


def test_errors():
    acts = np.ones((4, 4, 2), np.float32)
    with pytest.raises(ValueError, match=r"unknown CAM method 'nope'.*gradcam\+\+.*layercam-fused"):
        compute_cam("nope", [(acts, acts)])
    with pytest.raises(ValueError, match="same"):
        compute_cam("gradcam", [(acts, np.ones((4, 4, 3), np.float32))])
    with pytest.raises(ValueError, match="same"):
        compute_cam("gradcam", [(acts[..., 0], acts[..., 0])])
    with pytest.raises(ValueError, match="needs 1"):
        compute_cam("gradcam", [])
    with pytest.raises(ValueError, match="needs 2"):
        compute_cam("layercam-fused", [(acts, acts)])
    with pytest.raises(ValueError, match="stage 1"):
        compute_cam("layercam-fused", [(acts, acts), (acts, acts[:2])])


def test_registry_names():
    assert set(METHODS) == {"gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam", "layercam-fused"}
    assert set(METHODS) >= MULTI_LAYER


def lattice(h: int, w: int) -> np.ndarray:
    """7x at (even, even) positions, 1.5x at (even, odd) / (odd, even): what a stride-2 1x1 shortcut leaves."""
    weight = np.ones((h, w), np.float32)
    weight[0::2, :] *= 1.5
    weight[:, 0::2] *= 1.5
    weight[0::2, 0::2] = 7.0
    return weight


def test_pool_to_cells_averages_each_next_stage_cell():
    grads = np.random.default_rng(8).normal(0, 1, (16, 16, 3)).astype(np.float32)
    pooled = pool_to_cells(grads, (8, 8))
    assert pooled.shape == grads.shape and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled[4:6, 2:4], np.broadcast_to(grads[4:6, 2:4].mean(axis=(0, 1)), (2, 2, 3)),
                               rtol=1e-5, atol=1e-6)
    odd = pool_to_cells(grads[:15, :13], (8, 7))  # not a multiple: cells of unequal size, still their means
    np.testing.assert_allclose(odd[0, 0], grads[:2, :2].mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool_to_cells(grads, (16, 16)), grads)


def test_layercam_fused_has_no_stride_lattice():
    """Planted lattice in the fine stage's gradients: LayerCAM on it draws dots, the fused map does not."""
    rng = np.random.default_rng(9)
    coarse = gap_stage(rng)[:2]
    acts = np.maximum(rng.normal(0.5, 1.0, (16, 16, 8)), 0).astype(np.float32)
    grads = (rng.uniform(0.2, 1.0, (16, 16, 8)) * lattice(16, 16)[..., None]).astype(np.float32)

    def ratio(m: np.ndarray) -> float:
        return float(m[0::2, 0::2].mean() / m[1::2, 1::2].mean())

    assert ratio(normalize(layercam(acts, grads))) > 3
    assert 0.8 < ratio(compute_cam("layercam-fused", [coarse, (acts, grads)])) < 1.25
