"""Instance maps (common/instances.py): tight boxes, masks -> map, and the writer's masks input
(``attach_masks``): alignment, renumbering of empty masks, labels, refusals naming the item."""
import numpy as np
import pytest
import torch

from dtgen.nodes.common.instances import InstanceError, attach_masks, from_masks, instances_of
from dtgen.nodes.common.records import ScoredItem


def _item(label="cup", size=16, meta=None):
    return ScoredItem(image=np.zeros((size, size, 3), np.float32), label=label, prompt="", metadata=meta or {})


def test_boxes_are_tight_and_areas_exact():
    m = np.zeros((10, 12), np.uint16)
    m[2:5, 3:9] = 1
    m[7, 0] = 2
    a, b = instances_of(m, ["cup", "plate"])
    assert (a.bbox, a.area, a.label) == ((3, 2, 6, 3), 18, "cup") and (b.bbox, b.area) == ((0, 7, 1, 1), 1)


@pytest.mark.parametrize("labels, match", [(["cup"], "holds id 2"), (["a", "b", "c"], "instance 3 .* no pixels")])
def test_a_map_and_its_labels_must_agree(labels, match):
    m = np.zeros((4, 4), np.uint16)
    m[0, 0], m[1, 1] = 1, 2
    with pytest.raises(InstanceError, match=match):
        instances_of(m, labels)


def test_later_masks_cover_earlier_ones():
    a = np.zeros((6, 6), bool)
    a[0:4, 0:4] = True
    b = np.zeros((6, 6), bool)
    b[2:6, 2:6] = True
    m = from_masks(np.stack([a, b]).astype(np.float32))
    assert (m == 1).sum() == 12 and (m == 2).sum() == 16


def test_attach_masks_gives_each_item_its_instances_and_drops_empty_masks():
    items = [_item("cup"), _item("plate", meta={"instance_labels": ["plate", "fork", "knife"]})]
    m0 = torch.zeros((1, 16, 16))
    m0[0, 1:4, 1:4] = 1
    m1 = torch.zeros((3, 16, 16))
    m1[0, 0:2, 0:2] = 1      # plate
    m1[2, 8:10, 8:12] = 1    # knife; the fork mask is empty
    attach_masks(items, [m0, m1])
    assert items[0].instance_labels == ("cup",) and items[0].instance_map.max() == 1
    assert items[1].instance_labels == ("plate", "knife")
    assert sorted(np.unique(items[1].instance_map)) == [0, 1, 2] and (items[1].instance_map == 2).sum() == 8


def test_attach_masks_refuses_misaligned_or_mis_sized_masks():
    with pytest.raises(InstanceError, match="1 mask entries for 2 images"):
        attach_masks([_item(), _item()], [torch.zeros((1, 16, 16))])
    with pytest.raises(InstanceError, match=r"item 0 \(label 'cup'\).* 8 x 8 but the image is 16 x 16"):
        attach_masks([_item()], [torch.ones((1, 8, 8))])
    with pytest.raises(InstanceError, match="2 masks but 1 instance_labels"):
        attach_masks([_item(meta={"instance_labels": ["a"]})], [torch.ones((2, 16, 16))])
