"""Faithfulness measures against toy classifiers whose evidence sits in a known region (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest

from gateway import scene
from gateway.faithfulness import (
    assemble,
    center_gaussian_map,
    deletion_insertion,
    importance_rank,
    mass_inside,
    pointing_hit,
    random_map,
    scene_layout,
    stitch,
    tile_map,
    uniform_map,
)

SIZE = 32
REGION = (slice(4, 12), slice(20, 28))  # off-centre, 64 of 1024 pixels


def textured() -> np.ndarray:
    """Noise texture everywhere; REGION carries a fine checkerboard (the class's texture, which blur erases)."""
    img = np.random.default_rng(0).integers(80, 120, (SIZE, SIZE, 3), dtype=np.uint8)
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 200 + 20).astype(np.uint8)
    img[REGION] = checker[..., None]
    return img


class TextureClassifier:
    """P(class 0) rises with the high-frequency contrast inside REGION; records the batch shapes it is given."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        assert batch.dtype == np.uint8
        region = batch[:, REGION[0], REGION[1]].astype(np.float64)
        contrast = np.abs(np.diff(region, axis=2)).mean(axis=(1, 2, 3)) / 180.0
        p = np.clip(contrast, 0, 1)
        return np.stack([p, 1.0 - p], axis=1)


def region_map(shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    """A coarse map that points at REGION (as an 8x8 last-stage CAM would)."""
    cam = np.zeros((SIZE, SIZE), np.float32)
    cam[REGION] = 1.0
    return cam.reshape(shape[0], SIZE // shape[0], shape[1], SIZE // shape[1]).mean(axis=(1, 3))


def test_faithful_map_beats_its_inverse_and_every_baseline():
    predict = TextureClassifier()
    good_del, good_ins = deletion_insertion(predict, textured(), region_map(), 0, patches=8, steps=16)
    others = [region_map().max() - region_map(), random_map((8, 8), np.random.default_rng(1)), uniform_map((8, 8)),
              center_gaussian_map((8, 8))]
    for other in others:
        d, i = deletion_insertion(predict, textured(), other, 0, patches=8, steps=16)
        assert good_del < d - 0.1 and good_ins > i + 0.1
    for auc in (good_del, good_ins):
        assert 0.0 <= auc <= 1.0


def test_one_batched_predict_call_per_map():
    predict = TextureClassifier()
    deletion_insertion(predict, textured(), region_map(), 0, steps=10)
    assert predict.batches == [(22, SIZE, SIZE, 3)]


def test_raw_unbounded_map_ranks_like_its_normalised_version():
    predict = TextureClassifier()
    cam = region_map()
    assert deletion_insertion(predict, textured(), cam * 250.0 + 3.0, 0) == deletion_insertion(predict, textured(),
                                                                                                cam, 0)


def test_constant_predictor_integrates_to_its_value():
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.tile([0.7, 0.3], (len(batch), 1))

    d, i = deletion_insertion(predict, textured(), region_map(), 0, steps=8)
    assert d == pytest.approx(0.7) and i == pytest.approx(0.7)


def test_blur_baseline_and_whole_regions():
    seen: list[np.ndarray] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return np.full((len(batch), 1), 0.5)

    img = textured()
    deletion_insertion(predict, img, region_map(), 0, steps=4, patches=8)
    deleted, inserted = seen[0][:5], seen[0][5:]
    np.testing.assert_array_equal(deleted[0], img)
    np.testing.assert_array_equal(deleted[-1], inserted[0])  # everything blurred: the same "absent" image both ways
    assert inserted[0].std() < img.std() and len(np.unique(inserted[0].reshape(-1, 3), axis=0)) > 10  # blur, not flat
    np.testing.assert_array_equal(inserted[-1], img)
    changed = (deleted[1] != img).any(axis=-1)
    assert changed[REGION].all() and changed.sum() == 16 * 16  # the top quarter of the 4x4-px regions: REGION first
    changed_cells = changed.reshape(8, 4, 8, 4).any(axis=(1, 3))
    assert (changed.reshape(8, 4, 8, 4).all(axis=(1, 3)) == changed_cells).all()  # whole regions only


def test_ties_are_broken_in_a_seeded_random_order():
    flat = np.ones((4, 4), np.float32)
    rank = importance_rank(flat, (8, 8))
    assert sorted(rank.ravel()) == list(range(64))
    np.testing.assert_array_equal(rank, importance_rank(flat, (8, 8)))  # deterministic
    assert rank[:2].max() > 32  # not raster order (top rows first)
    peaked = np.zeros((8, 8), np.float32)
    peaked[5, 6] = 1.0
    assert importance_rank(peaked, (8, 8))[5, 6] == 0


def test_baseline_maps():
    r = random_map((5, 6), np.random.default_rng(0))
    assert r.shape == (5, 6) and r.dtype == np.float32 and r.min() >= 0 and r.max() < 1
    g = center_gaussian_map((9, 7))
    assert g.shape == (9, 7) and g.max() == pytest.approx(1.0) and g[4, 3] == g.max()
    np.testing.assert_allclose(g, g[::-1, ::-1])
    assert (uniform_map((3, 2)) == 1).all()


def test_errors():
    predict = TextureClassifier()
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(predict, textured(), region_map(), 0, steps=0)
    with pytest.raises(ValueError, match="patches"):
        deletion_insertion(predict, textured(), region_map(), 0, patches=64)
    with pytest.raises(ValueError, match="class_index"):
        deletion_insertion(predict, textured(), region_map(), 5)
    with pytest.raises(ValueError, match="RGB uint8"):
        deletion_insertion(predict, textured()[..., 0], region_map(), 0)
    with pytest.raises(ValueError, match="2-D"):
        deletion_insertion(predict, textured(), np.ones((2, 2, 2)), 0)
    with pytest.raises(ValueError, match="blur_sigma"):
        deletion_insertion(predict, textured(), region_map(), 0, blur_sigma=-1)


# Localization on assembled scenes.
def tiles_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """Tile i is filled with the value i (so a scene can be read back), labels 0, 1, 2 repeating."""
    tiles = np.broadcast_to(np.arange(30, dtype=np.uint8)[:, None, None, None], (30, 8, 8, 3)).copy()
    return tiles, np.arange(30) % 3


@pytest.mark.parametrize("shifted", [False, True])
def test_scene_layout_and_assembly(shifted):
    tiles, labels = tiles_and_labels()
    for seed in range(20):
        indices, target, (top, left) = scene_layout(labels, np.random.default_rng(seed), shifted=shifted)
        n = 5 if shifted else 4
        assert indices.shape == (n, n)
        block = indices[top : top + 2, left : left + 2]
        assert (labels[block] == target).all() and len(set(block.ravel())) == 4
        outside = np.ones((n, n), bool)
        outside[top : top + 2, left : left + 2] = False
        assert (labels[indices[outside]] != target).all()
        image, mask = assemble(tiles, indices, (top, left), shifted=shifted)
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert mask.mean() == 0.25  # the block is always whole inside the scene: chance is a quarter
        assert set(np.unique(image[mask][:, 0])) == set(block.ravel())
        assert not set(np.unique(image[~mask][:, 0])) & set(block.ravel())
    _, _, (top, left) = scene_layout(labels, np.random.default_rng(0), shifted=True)
    assert 1 <= top <= 2 and 1 <= left <= 2


def test_scene_layout_needs_a_full_block():
    with pytest.raises(ValueError, match="at least 4"):
        scene_layout(np.array([0, 0, 0, 1, 1, 1]), np.random.default_rng(0))


def test_mass_and_pointing():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True
    assert mass_inside(np.ones((4, 4)), mask) == pytest.approx(0.25)
    assert pointing_hit(np.ones((4, 4)), mask) == pytest.approx(0.25)  # ties: the share of maxima inside
    assert mass_inside(np.zeros((4, 4)), mask) == pytest.approx(0.25)  # a blank map knows nothing
    peaked = np.full((4, 4), 0.1)
    peaked[1, 1] = 1.0
    assert pointing_hit(peaked, mask) == 1.0 and mass_inside(peaked, mask) == pytest.approx(1.3 / 2.5)
    peaked[1, 1], peaked[3, 3] = 0.1, 1.0
    assert pointing_hit(peaked, mask) == 0.0


def test_stitched_scale_is_the_tile_probability():
    """Tile maps reach their tile's probability, so a tile without the class stays dark whatever its own map."""
    grid = scene.Grid((16, 16), (8, 8))
    raw = [np.eye(4, dtype=np.float32) * 3] * 4
    stitched = stitch(grid, [tile_map(r, p) for r, p in zip(raw, (0.9, 0.1, 0.0, 0.5), strict=True)])
    assert stitched.shape == (8, 8)
    assert [stitched[:4, :4].max(), stitched[:4, 4:].max(), stitched[4:, :4].max(), stitched[4:, 4:].max()] == \
        pytest.approx([0.9, 0.1, 0.0, 0.5])
    mask = np.zeros((16, 16), bool)
    mask[:8, :8] = True
    assert mass_inside(stitched, mask) == pytest.approx(0.9 / 1.5)
    assert pointing_hit(stitched, mask) == 1.0
    assert not tile_map(np.zeros((4, 4)), 0.7).any()
