"""Classes and edits follow their pixels to a re-run: overlaps of old and new clusters."""

import numpy as np

from napari_datus.class_carry import Carry, pixel_counts
from napari_datus.class_map import ClassMap
from napari_datus.core.pseudolabel import upsample_nearest


def brute_counts(old: np.ndarray, new: np.ndarray, shape) -> np.ndarray:
    counts = np.zeros((256, 256), dtype=np.int64)
    np.add.at(counts, (upsample_nearest(old, shape), upsample_nearest(new, shape)), 1)
    return counts


def test_pixel_counts_are_the_pixels_of_the_upsampled_masks():
    rng = np.random.default_rng(0)
    old = rng.integers(0, 4, (5, 5)).astype(np.uint8)
    old[0, 0] = 255
    for new in (rng.integers(0, 6, (5, 5)), rng.integers(0, 6, (7, 7))):
        new = new.astype(np.uint8)
        np.testing.assert_array_equal(pixel_counts(old, new, (37, 23)),
                                      brute_counts(old, new, (37, 23)))


def carry(pairs: dict[tuple[int, int], int]) -> Carry:
    counts = np.zeros((256, 256), dtype=np.int64)
    for (old, new), n in pairs.items():
        counts[old, new] = n
    return Carry(counts)


def test_each_new_cluster_joins_the_class_it_covers_most_whatever_its_name():
    earlier = ClassMap.per_cluster(2)
    earlier.rename(1, "fish")
    earlier.add_class("empty")
    # New cluster 0 is mostly old cluster 1 (fish), new 1 mostly old 0, new 2 touches nothing.
    moved = carry({(1, 0): 90, (0, 0): 10, (0, 1): 50}).class_map(earlier, 3)
    assert moved.assignment == [1, 0, None]
    assert [c.name for c in moved.classes] == ["cluster 0", "fish", "empty"]
    moved.rename(1, "not shared")
    assert earlier.classes[1].name == "fish"


def test_edits_keep_their_class_or_follow_their_cluster():
    earlier = ClassMap.per_cluster(3)
    robot = earlier.add_class("robot")
    earlier.assign(2, None)
    earlier.assignment.append(robot)  # cluster 3: made for "robot" by a reassignment
    moves = carry({(0, 1): 10, (1, 0): 10, (2, 0): 3, (2, 2): 7, (3, 0): 5})
    later = moves.class_map(earlier, 3)
    moves.classes_of = earlier.lookup()
    labels = np.array([0, 1, 2, 3, 4, 9], dtype=np.uint8)  # layer labels: cluster + 1
    out = moves.translate(labels, later)
    # 0 stays unlabelled; old 0 -> its class 0 -> new 1; old 1 -> class 1 -> new 0;
    # old 2 had no class -> the new cluster covering it most (2); old 3 -> robot, which no
    # new cluster covers most -> a cluster made for it (3); old 8 covered nothing: dropped.
    assert out.tolist() == [0, 2, 1, 3, 4, -1]
    assert later.class_of(3) == robot
