"""QueryService: mixed-generation search, add, sync with other writers, deletions, promotion swaps."""

from __future__ import annotations

import numpy as np
import pytest

from registry.errors import DuplicateItem
from upgrader.core.errors import InvalidRequest
from upgrader.services.registration import open_embedder
from upgrader.runtime.images import BadImage, ImageTooLarge, decode_image
from upgrader.serving import QueryService, ServingConfig
from upgrader.services.promotion import promote
from upgrader.services.workspace import open_workspace

MANUAL = ServingConfig(poll_seconds=0)  # no watcher thread: the tests call refresh() themselves


def test_search_returns_items_of_all_three_generations(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc:
        queries = np.concatenate([case.images[g][:2] for g in ("g1", "g2", "g3")])  # [6, 28, 28, 1]
        result = svc.search(queries, k=60)
        assert result.generation.name == "g3"  # queries embedded by production
        found = {h.generation_id for row in result.hits for h in row}
        assert found == {case.gen_ids["g1"], case.gen_ids["g2"], case.gen_ids["g3"]}
        for row in result.hits:
            assert len(row) == 60 and [h.score for h in row] == sorted((h.score for h in row), reverse=True)
        # an item production itself wrote is found first, as itself
        top = result.hits[4][0]
        assert (top.external_id, top.generation_id) == (case.ids["g3"][0], case.gen_ids["g3"])
        assert top.score == pytest.approx(1.0, abs=1e-4)
        assert svc.status().items_by_generation == {case.gen_ids[g]: 20 for g in ("g1", "g2", "g3")}


def test_embed_uses_the_production_artifact(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc:
        out = svc.embed(case.spare[:3])
        reference = open_embedder(svc.workspace, svc.snapshot().generation).embed(case.spare[:3])
        assert out.generation.name == "g3" and out.embeddings.shape == (3, 15)
        np.testing.assert_allclose(out.embeddings, reference, atol=1e-6)


def test_add_is_searchable_at_once_and_refusals_change_nothing(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc:
        added = svc.add(case.spare[:2], ["new-0", "new-1"], labels=["x", None])
        assert (added.added, added.gallery_items, added.generation.name) == (2, 62, "g3")
        hit = svc.search(case.spare[1:2], k=1).hits[0][0]
        assert (hit.external_id, hit.label, hit.generation_id) == ("new-1", None, case.gen_ids["g3"])
        before = svc.workspace.registry.gallery_counts()
        with pytest.raises(DuplicateItem):
            svc.add(case.spare[2:4], ["fresh", "new-0"])  # one known id: the whole batch is refused
        with pytest.raises(InvalidRequest, match="ids"):
            svc.add(case.spare[2:4], ["a"])
        with pytest.raises(InvalidRequest, match="shape"):
            svc.search(np.zeros((1, 32, 32, 1), np.uint8), k=1)
        with pytest.raises(InvalidRequest, match="k must be"):
            svc.search(case.spare[:1], k=0)
        with pytest.raises(BadImage):
            svc.add([b"not an image"], ["z"])
        assert svc.workspace.registry.gallery_counts() == before and len(svc.status().items_by_generation) == 3
        assert svc.status().gallery_items == 62


def test_items_added_reembedded_and_deleted_elsewhere_are_followed_without_a_rebuild(backend_case) -> None:  # type: ignore[no-untyped-def]
    # Another process adds three items, re-embeds one with another generation and deletes one; the
    # service follows the registry's change sequence: no recount, no rebuild, on both backends.
    with QueryService(backend_case.home, MANUAL) as svc, open_workspace(backend_case.home) as other:
        reg = other.registry
        prod = reg.get_generation("production")
        spare = np.random.default_rng(0).integers(0, 255, (3, 28, 28, 1), dtype=np.uint8)
        feats = open_embedder(other, prod).embed(spare)
        reg.add_gallery_items(prod.id, ["cli-0", "cli-1", "cli-2"], feats, labels=["a", "b", "c"])
        before = svc.status().gallery_items
        assert svc.sync() == 3 and svc.status().gallery_items == before + 3
        assert svc.search(spare[2:3], k=1).hits[0][0].external_id == "cli-2"
        newer = reg.get_generation(backend_case.other_id)
        reg.reembed_gallery_items(["cli-1"], newer.id, open_embedder(other, newer).embed(spare[1:2]))
        reg.delete_gallery_items(["cli-2"])
        svc.refresh()
        st = svc.status()
        assert (st.gallery_items, st.rebuilds, st.last_error) == (before + 2, 0, None)
        assert st.gallery_version == reg.gallery_version()
        hits = {h.external_id: h for h in svc.search(spare[1:2], k=before + 2).hits[0]}
        assert "cli-2" not in hits
        assert (hits["cli-1"].generation_id, hits["cli-1"].label) == (newer.id, "b")  # switched in place
        assert st.items_by_generation[newer.id] == 1
        assert svc.sync() == 0  # nothing new: the cursor moved past every change


def test_a_deleted_id_added_again_is_one_item(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc, open_workspace(case.home) as other:
        gone = case.ids["g1"][0]
        other.registry.delete_gallery_items([gone])
        prod = other.registry.get_generation("production")
        other.registry.add_gallery_items(prod.id, [gone], open_embedder(other, prod).embed(case.spare[:1]))
        svc.refresh()
        hits = [h for h in svc.search(case.spare[:1], k=60).hits[0] if h.external_id == gone]
        assert len(hits) == 1 and hits[0].generation_id == prod.id
        assert svc.status().gallery_items == 60 and svc.status().rebuilds == 0


def test_promotion_swaps_the_snapshot_and_requests_in_flight_keep_theirs(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc:
        old = svc.snapshot()  # what a request in flight holds
        with open_workspace(case.home) as other:
            promote(other, "g4", force=True, reason="test")
        assert svc.snapshot() is old  # nothing changes until the watcher's tick
        svc.refresh()
        new = svc.snapshot()
        assert (old.generation.name, new.generation.name) == ("g3", "g4")
        assert svc.status().reloads == 1
        # the old snapshot still embeds (its request finishes on g3); new requests use g4
        np.testing.assert_allclose(old.embedder.embed(case.spare[:1]),
                                   open_embedder(svc.workspace, old.generation).embed(case.spare[:1]), atol=1e-6)
        result = svc.search(case.spare[:1], k=60)
        assert result.generation.name == "g4"
        assert len({h.generation_id for h in result.hits[0]}) == 3  # same gallery, not re-embedded
        added = svc.add(case.spare[:1], ["after-promotion"])
        assert added.generation.name == "g4"
        assert svc.workspace.registry.gallery_counts()[case.gen_ids["g4"]] == 1


def test_a_broken_new_artifact_keeps_the_old_generation_serving(case) -> None:  # type: ignore[no-untyped-def]
    with QueryService(case.home, MANUAL) as svc:
        with open_workspace(case.home) as other:
            promote(other, "g4", force=True, reason="test")
            path = other.resolve(other.registry.get_generation("g4").onnx_path)
        path.write_bytes(path.read_bytes()[:-10] + b"tampered!!")
        svc.refresh()
        st = svc.status()
        assert st.serving is not None and st.serving.name == "g3" and st.production_alias == case.gen_ids["g4"]
        assert st.last_error is not None and "sha256" in st.last_error
        assert svc.search(case.spare[:1], k=1).generation.name == "g3"


def test_decode_image_resizes_and_guards(png) -> None:  # type: ignore[no-untyped-def]
    rgb = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    out = decode_image(png(rgb), (28, 28, 1))
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8
    with pytest.raises(BadImage):
        decode_image(b"GIF89a-not-really", (28, 28, 1))
    with pytest.raises(ImageTooLarge, match="1200x10"):
        decode_image(png(np.zeros((10, 1200, 1), np.uint8)), (28, 28, 1), max_side=1000)


def test_watcher_follows_a_promotion_on_its_own(case) -> None:  # type: ignore[no-untyped-def]
    import time

    with QueryService(case.home, ServingConfig(poll_seconds=0.05)) as svc:
        assert svc.status().watching
        with open_workspace(case.home) as other:
            promote(other, "g4", force=True, reason="test")
        deadline = time.monotonic() + 120  # a bound for a broken watcher, not an expected time
        while svc.snapshot().generation.name != "g4" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert svc.snapshot().generation.name == "g4"
    assert not svc.status().watching  # close() stopped it


def test_a_running_service_follows_a_reembed_and_a_deletion_on_its_own(case) -> None:  # type: ignore[no-untyped-def]
    import time

    def wait_for(condition) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 120  # a bound for a broken watcher, not an expected time
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert condition()

    with QueryService(case.home, ServingConfig(poll_seconds=0.05)) as svc, open_workspace(case.home) as other:
        item = case.ids["g1"][3]
        g4 = other.registry.get_generation("g4")
        image = case.images["g1"][3:4]
        other.registry.reembed_gallery_items([item], g4.id, open_embedder(other, g4).embed(image))

        def top() -> tuple[str, int]:
            hit = [h for h in svc.search(image, k=60).hits[0] if h.external_id == item]
            return (hit[0].external_id, hit[0].generation_id) if hit else ("", 0)

        wait_for(lambda: top() == (item, g4.id))  # switched generation, no restart
        other.registry.delete_gallery_items([item])
        wait_for(lambda: top() == ("", 0))
        assert svc.status().gallery_items == 59 and svc.status().rebuilds == 0
