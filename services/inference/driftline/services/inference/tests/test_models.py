from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from prometheus_client import REGISTRY

from driftline.services.inference.batcher import BatchingOptions
from driftline.services.inference.errors import ModelLoadError, ModelNotReady, UnknownModel
from driftline.services.inference.loader import ChangeType, ModelChange, ModelLoader
from driftline.services.inference.models import ModelMeta, ModelSlots, Role, RoutingOptions, canary_bucket
from driftline.services.inference.testing import FakeRuntime, FakeSource


def x(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.full((rows, 3), value, dtype=np.float32)}


def failures(alias: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "driftline_inference_model_load_failures_total", {"alias": alias, "reason": reason}
    )
    return value or 0.0


async def test_in_flight_requests_finish_on_the_old_model_and_new_ones_get_the_new():
    slots = ModelSlots("fraud", BatchingOptions(max_batch_size=8))
    gate = threading.Event()
    old_runtime = FakeRuntime(gate=gate, tag=1.0)
    old = await slots.install(Role.CHAMPION, ModelMeta("fraud", 1), old_runtime)

    async def request(value: float) -> tuple[int, float]:
        model = slots.route("card-1").model
        with model.lease():
            outputs = await model.infer(x(value))
        return model.version, float(outputs[1][0])

    in_flight = [asyncio.create_task(request(0.1)) for _ in range(5)]
    await asyncio.sleep(0.02)
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 2), FakeRuntime(tag=2.0))
    after = await asyncio.gather(*(request(0.2) for _ in range(5)))
    assert after == [(2, 2.0)] * 5
    assert not any(t.done() for t in in_flight)
    gate.set()
    assert await asyncio.gather(*in_flight) == [(1, 1.0)] * 5
    await asyncio.sleep(0.05)
    with pytest.raises(ModelNotReady):
        await old.infer(x(0.1))  # retired once its last request ended
    await slots.close()


async def test_routing_needs_a_champion_and_a_known_model_name():
    slots = ModelSlots("fraud")
    with pytest.raises(ModelNotReady) as err:
        slots.route("card-1")
    assert err.value.status.name == "UNAVAILABLE"
    with pytest.raises(UnknownModel) as unknown:
        slots.check_name("other")
    assert unknown.value.status.name == "NOT_FOUND"
    slots.check_name("")
    slots.check_name("fraud")


async def test_canary_routing_is_sticky_per_entity_and_close_to_its_share():
    slots = ModelSlots("fraud", routing=RoutingOptions(canary_share=0.3))
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 1), FakeRuntime())
    await slots.install(Role.CHALLENGER, ModelMeta("fraud", 2), FakeRuntime())
    entities = [f"card-{i}" for i in range(4000)]
    first = {e: slots.route(e).model.version for e in entities}
    for _ in range(3):
        assert {e: slots.route(e).model.version for e in entities} == first
    share = sum(v == 2 for v in first.values()) / len(entities)
    assert 0.27 < share < 0.33
    # Raising the share only adds entities to the canary.
    wider = ModelSlots("fraud", routing=RoutingOptions(canary_share=0.6))
    assert all(canary_bucket("fraud", e) < 0.6 for e, v in first.items() if v == 2)
    assert all(slots.route(e).shadow is None for e in entities[:10])
    await slots.close()
    await wider.close()


async def test_without_a_challenger_canary_traffic_stays_on_the_champion():
    slots = ModelSlots("fraud", routing=RoutingOptions(canary_share=1.0))
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 1), FakeRuntime())
    assert {slots.route(f"c{i}").model.version for i in range(50)} == {1}
    await slots.close()


async def test_shadow_mode_serves_the_champion_and_shadows_the_challenger():
    slots = ModelSlots("fraud", routing=RoutingOptions(shadow=True))
    await slots.install(Role.CHAMPION, ModelMeta("fraud", 1), FakeRuntime())
    await slots.install(Role.CHALLENGER, ModelMeta("fraud", 2), FakeRuntime())
    route = slots.route("card-1")
    assert route.model.version == 1
    assert route.shadow is not None
    assert route.shadow.version == 2
    await slots.close()


def test_shadow_and_canary_are_exclusive():
    with pytest.raises(ValueError):
        RoutingOptions(shadow=True, canary_share=0.1)


async def test_a_model_whose_width_disagrees_with_its_feature_list_is_refused():
    slots = ModelSlots("fraud")
    with pytest.raises(ModelLoadError):
        await slots.install(Role.CHAMPION, ModelMeta("fraud", 1, feature_names=("a", "b")), FakeRuntime(3))
    assert not slots.ready


def make_loader(slots: ModelSlots, source: FakeSource, runtimes: dict[bytes, FakeRuntime]) -> ModelLoader:
    return ModelLoader(
        source=source,
        load_runtime=lambda data: runtimes[data],
        slots=slots,
        loop=asyncio.get_running_loop(),
        aliases={"champion": Role.CHAMPION, "challenger": Role.CHALLENGER},
    )


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def test_alias_events_swap_the_champion_and_failed_loads_keep_the_old_one():
    slots = ModelSlots("fraud")
    source = FakeSource()
    runtimes = {b"v1": FakeRuntime(tag=1), b"v2": FakeRuntime(tag=2), b"v3": FakeRuntime(fail_warm_up=True)}
    source.add(1, b"v1", params={"decision_threshold": "0.7"})
    source.add(2, b"v2")
    source.add(3, b"v3")
    source.aliases["champion"] = 1
    loader = make_loader(slots, source, runtimes)

    assert await in_thread(loader.load_alias, "champion")
    assert slots.champion is not None
    assert slots.champion.version == 1
    assert slots.champion.meta.threshold == 0.7

    warm_failures = failures("champion", "warm_up_failed")
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 3))
    assert slots.champion.version == 1
    assert failures("champion", "warm_up_failed") == warm_failures + 1

    digest_failures = failures("champion", "digest_mismatch")
    bad = ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 2, sha256="0" * 64)
    assert not await in_thread(loader.apply, bad)
    assert slots.champion.version == 1
    assert failures("champion", "digest_mismatch") == digest_failures + 1

    source.artifacts[2] = b"v1"  # the store returns other bytes than the registry recorded
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 2))
    assert failures("champion", "digest_mismatch") == digest_failures + 2
    source.artifacts[2] = b"v2"

    assert await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 2))
    assert slots.champion.version == 2
    value = REGISTRY.get_sample_value(
        "driftline_inference_model_info",
        {"model": "fraud", "alias": "champion", "version": "2", "sha256": source.digests[2]},
    )
    assert value == 1.0
    await slots.close()


async def test_the_mirror_gets_each_model_first_in_its_role_and_its_refusal_keeps_the_old_one():
    slots = ModelSlots("fraud")
    source = FakeSource()
    for version in (1, 2, 3):
        source.add(version, f"v{version}".encode())
    source.add(4, b"c4")
    source.aliases["champion"] = 1

    class Mirror:
        def __init__(self) -> None:
            self.loaded: list[tuple[bytes, int, str, Role]] = []
            self.removed: list[Role] = []

        def load(self, data: bytes, meta: ModelMeta, runtime: FakeRuntime, role: Role) -> FakeRuntime:
            # The service's model in the role is still the previous one when the mirror is called.
            current = slots.serving(role)
            assert current is None or current.version != meta.version
            if data == b"v2":
                raise ModelLoadError("the data plane refused it")
            self.loaded.append((data, meta.version, meta.sha256, role))
            return FakeRuntime(tag=100 + meta.version)  # what the slot keeps instead

        def remove(self, role: Role) -> None:
            assert slots.serving(role) is not None  # before it goes here
            self.removed.append(role)

    mirror = Mirror()
    runtimes = {data: FakeRuntime(tag=i) for i, data in enumerate([b"v1", b"v2", b"v3", b"c4"])}
    loader = ModelLoader(
        source=source,
        load_runtime=lambda data: runtimes[data],
        slots=slots,
        loop=asyncio.get_running_loop(),
        aliases={"champion": Role.CHAMPION, "challenger": Role.CHALLENGER},
        mirror=mirror,
    )
    assert await in_thread(loader.load_alias, "champion")
    refused = failures("champion", "model_load_failed")
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 2))
    assert slots.champion is not None
    assert slots.champion.version == 1
    assert failures("champion", "model_load_failed") == refused + 1
    assert await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 3))
    assert await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "challenger", 4))
    assert slots.champion.version == 3
    assert slots.champion.runtime.tag == 103  # the slot holds what the mirror returned
    # Each model with its role and the digest the service verified.
    assert mirror.loaded == [
        (b"v1", 1, source.digests[1], Role.CHAMPION),
        (b"v3", 3, source.digests[3], Role.CHAMPION),
        (b"c4", 4, source.digests[4], Role.CHALLENGER),
    ]
    assert await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_DELETED, "fraud", "challenger"))
    assert slots.challenger is None
    assert mirror.removed == [Role.CHALLENGER]
    # The champion's alias going away changes nothing, here or there.
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_DELETED, "fraud", "champion"))
    assert mirror.removed == [Role.CHALLENGER]
    await slots.close()


async def test_events_for_other_models_or_aliases_and_repeats_change_nothing():
    slots = ModelSlots("fraud")
    source = FakeSource()
    source.add(1, b"v1")
    source.aliases["champion"] = 1
    loader = make_loader(slots, source, {b"v1": FakeRuntime()})
    assert await in_thread(loader.load_alias, "champion")
    fetches = source.fetches
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "other", "champion", 1))
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "staging", 1))
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_SET, "fraud", "champion", 1))
    assert not await in_thread(loader.apply, ModelChange(ChangeType.OTHER, "fraud", "champion", 1))
    assert source.fetches == fetches
    await slots.close()


async def test_deleting_the_champion_alias_keeps_serving_and_deleting_the_challenger_removes_it():
    slots = ModelSlots("fraud", routing=RoutingOptions(canary_share=0.5))
    source = FakeSource()
    source.add(1, b"v1")
    source.add(2, b"v2")
    source.aliases.update(champion=1, challenger=2)
    loader = make_loader(slots, source, {b"v1": FakeRuntime(), b"v2": FakeRuntime()})
    assert await in_thread(loader.load_alias, "champion")
    assert await in_thread(loader.load_alias, "challenger")
    assert slots.challenger is not None
    assert not await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_DELETED, "fraud", "champion"))
    assert slots.champion is not None
    assert await in_thread(loader.apply, ModelChange(ChangeType.ALIAS_DELETED, "fraud", "challenger"))
    assert slots.challenger is None
    await slots.close()


async def test_an_unset_alias_or_unreachable_registry_loads_nothing():
    slots = ModelSlots("fraud")
    source = FakeSource()
    loader = make_loader(slots, source, {})
    assert not await in_thread(loader.load_alias, "champion")

    def down(name, alias):
        raise ConnectionError("registry down")

    source.resolve = down  # type: ignore[method-assign]
    before = failures("champion", "resolve_failed")
    assert not await in_thread(loader.load_alias, "champion")
    assert failures("champion", "resolve_failed") == before + 1
    assert not slots.ready
