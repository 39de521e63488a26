"""Selection rules of the pruning state (pure numpy): ranking, normalisation, choosing, divisor rounding."""
import numpy as np

from mmfisher.core import selection


def test_rank_breaks_ties_by_atom_index_and_skips_non_candidates():
    score = np.array([0.5, 0.1, 0.1, 0.0, 0.1])
    cand = np.array([True, True, True, False, True])
    assert selection.rank(score, cand).tolist() == [1, 2, 4, 0]


def test_scores_normalise_delta_and_never_pick_free_atoms():
    s = selection.scores(np.array([1.0, 1.0, 0.0]), np.array([2.0, 4.0, 0.0]))
    assert s.tolist() == [2.0, 1.0, np.inf]


def test_choose_respects_min_keep_per_unit_k_and_the_target():
    unit_of = np.array([0, 0, 0, 1, 1, 1])
    alive = np.ones(6, dtype=bool)
    ranked = np.array([0, 1, 2, 3, 4, 5])
    never = lambda a, c: False  # noqa: E731
    assert selection.choose(ranked, alive, unit_of, 1, 10, never) == [0, 1, 3, 4]
    assert selection.choose(ranked, alive, unit_of, 2, 10, never) == [0, 3]
    assert selection.choose(ranked, alive, unit_of, 1, 3, never) == [0, 1, 3]
    assert selection.choose(ranked, alive, unit_of, 1, 10, lambda a, c: (~a).sum() >= 2) == [0, 1]
    assert alive.all()  # not modified


def test_round_up_revives_the_most_recently_masked_atoms():
    units = [np.arange(0, 6), np.arange(6, 9)]
    alive = np.ones(9, dtype=bool)
    order = [0, 2, 4, 6, 7]
    alive[order] = False
    out = selection.round_up(alive, units, 4, order)
    assert out[[1, 3, 5, 4]].all() and not out[[0, 2]].any()  # unit 0: 3 kept -> 4, atom 4 was masked last
    assert out[6:].all()  # unit 1: 1 kept -> 4, capped at its size 3
    assert np.array_equal(selection.round_up(alive, units, 1, order), alive)
