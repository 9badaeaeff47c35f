"""The location prior (npcrepro.metrics.prior): the real-data tracks' reference that reads no image."""
from __future__ import annotations

import numpy as np
import pytest

from npcrepro.errors import DataError
from npcrepro.metrics.prior import location_prior, location_priors, prior_scores


def test_slices_pooled_the_prior_is_the_thresholded_mean_of_every_training_slice():
    a = np.zeros((1, 4, 4), bool)
    a[0, :2, :2] = True  # 4 pixels
    b = np.zeros((2, 4, 4), bool)
    b[0, :2, :3] = True  # 6 pixels: the (0, 2) and (1, 2) pixels in 1 of 3 slices
    b[1, 0, 0] = True
    # pooled over the 3 slices: (0,0) in 3, (0,1)/(1,0)/(1,1) in 2, (0,2)/(1,2) in 1 -> >= 0.5: 4 pixels
    ref = np.zeros((1, 4, 4), bool)
    ref[0, 1, :] = True  # 4 pixels, 2 of them in the prior
    two = np.stack([ref[0], np.zeros((4, 4), bool)])  # the prior is predicted on every slice: 8 pixels
    scores = prior_scores([a, b], {"t": ref, "two": two, "none": np.zeros((1, 4, 4), bool)}, 0.5, pool_slices=True)
    assert scores["t"] == pytest.approx(2 * 2 / (4 + 4)) and scores["two"] == pytest.approx(2 * 2 / (8 + 4))
    assert scores["none"] == 0.0  # the prior predicts tumour where the reference has none
    assert prior_scores([a, b], {"t": ref}, 0.3, pool_slices=True)["t"] == pytest.approx(2 * 3 / (6 + 4))
    assert location_prior([a, b], 0.5, pool_slices=True).shape == (4, 4)


def test_volumes_the_prior_is_the_thresholded_mean_voxel_by_voxel():
    a, b, c = (np.zeros((2, 3, 3), bool) for _ in range(3))
    a[0, 0, :] = True            # 3 voxels of slice 0
    b[0, 0, :2] = True           # 2 of them
    c[1, 2, 2] = True            # one voxel of slice 1
    # voxel frequencies: (0,0,0), (0,0,1) 2/3; (0,0,2) 1/3; (1,2,2) 1/3
    assert location_prior([a, b, c], 0.5).sum() == 2
    assert location_prior([a, b, c], 0.3).sum() == 4
    ref = np.zeros((2, 3, 3), bool)
    ref[0, 0, 1:] = True         # 2 voxels, 1 of them in the 0.5 prior
    assert prior_scores([a, b, c], {"t": ref}, 0.5)["t"] == pytest.approx(2 * 1 / (2 + 2))
    assert prior_scores([a, b, c], {"t": ref}, 0.3)["t"] == pytest.approx(2 * 2 / (4 + 2))
    # pooled, each of the 6 slices counts once: (0, 0) and (0, 1) in 2 of 6 (>= 0.3), predicted on both slices
    assert prior_scores([a, b, c], {"t": ref}, 0.3, pool_slices=True)["t"] == pytest.approx(2 * 1 / (4 + 2))


def test_bad_masks_raise_one_line_errors():
    a = np.zeros((1, 4, 4), bool)
    with pytest.raises(DataError, match="at least one training mask"):
        prior_scores([], {"t": a}, 0.5)
    with pytest.raises(DataError, match="one size"):
        prior_scores([a], {"t": np.zeros((1, 5, 5), bool)}, 0.5, pool_slices=True)
    with pytest.raises(DataError, match="one size"):
        location_prior([a, np.zeros((2, 4, 4), bool)], 0.5)        # volumes of two shapes
    with pytest.raises(DataError, match="one size"):
        prior_scores([a], {"t": np.zeros((2, 4, 4), bool)}, 0.5)   # a test volume of another shape
    assert prior_scores([a], {"t": np.zeros((2, 4, 4), bool)}, 0.5, pool_slices=True)["t"] == 1.0  # both empty


def test_per_structure_priors_come_from_the_patients_that_have_the_structure():
    a, b, c = (np.zeros((2, 3, 3), bool) for _ in range(3))
    a[0, 0, :] = True
    b[0, 0, :2] = True
    c[1, 2, 2] = True
    seen = []

    none = np.zeros_like(a)

    def patients():  # one patient at a time, read once
        for i, masks in enumerate(({"Brainstem": a, "Larynx": c}, {"Brainstem": b}, {"Brainstem": c, "Larynx": none})):
            seen.append(i)
            yield masks

    priors = location_priors(patients(), 0.5)
    assert seen == [0, 1, 2] and set(priors) == {"Brainstem", "Larynx"}
    np.testing.assert_array_equal(priors["Brainstem"], location_prior([a, b, c], 0.5))
    # the larynx of one patient (an empty mask is a patient without it): its own mask, not 1 of 3
    np.testing.assert_array_equal(priors["Larynx"], c)
    with pytest.raises(DataError, match="at least one training mask"):
        location_priors([{"Brainstem": none}], 0.5)
    with pytest.raises(DataError, match="one size: Brainstem"):
        location_priors([{"Brainstem": a}, {"Brainstem": np.ones((1, 3, 3), bool)}], 0.5)
