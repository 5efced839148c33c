"""A pooled upgrade end to end: two organizations fine-tune the toy TinyLM on their own data, pool their
adapters in a collaboration, a real worker lifts the average, and both (and no one else) use the result."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.services import Services
from tests.e2e.test_service import PROBE, assert_changes_the_llm, download, upload, wait_finished

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_adapter(toy_pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another organization's adapter: the same task, its own examples."""
    from models.data.tasks import get_task, make_splits
    from models.pairs import PairStore
    from models.training.finetune import finetune_adapter

    pair = PairStore(toy_pairs_dir).get("toy")
    task = pair.spec.tasks[0]
    private = make_splits(get_task(task), seed=pair.spec.seed).private
    return finetune_adapter(pair, task, tmp_path_factory.mktemp("adapter2"), steps=60, seed=1,
                            examples=private[len(private) // 2:])


def test_pooled_upgrade_of_two_organizations(toy_pairs_dir: Path, toy_adapter: Path, second_adapter: Path,
                                             tmp_path: Path) -> None:
    env = {"GRADLIFT_DATA_DIR": str(tmp_path / "data"), "GRADLIFT_PAIRS_DIR": str(toy_pairs_dir)}
    with Services(env, tmp_path / "logs") as services:
        services.serve()
        acme, globex, initech = (services.client(services.make_key(o)) for o in ("acme", "globex", "initech"))
        collab = acme.post("/v1/collaborations", json={"name": "rotations", "pair": "toy"}).json()["id"]
        globex_id = globex.get("/v1/organizations/me").json()["id"]
        assert acme.post(f"/v1/collaborations/{collab}/invitations",
                         json={"organization_id": globex_id}).status_code == 200
        assert globex.post(f"/v1/collaborations/{collab}/join").status_code == 200
        checkpoints = [upload(acme, toy_adapter), upload(globex, second_adapter)]
        for client, checkpoint in zip((acme, globex), checkpoints, strict=True):
            response = client.post(f"/v1/collaborations/{collab}/contributions",
                                   json={"checkpoint_id": checkpoint["id"]})
            assert response.status_code == 200, response.text

        created = globex.post("/v1/upgrades", json={"pair": "toy", "collaboration_id": collab})
        assert created.status_code == 200, created.text
        job = wait_finished(acme, created.json()["id"], services)  # followed by the other member
        assert job["status"] == "succeeded", job
        delta = acme.get(f"/v1/deltas/{job['delta_id']}").json()
        assert delta["collaboration_id"] == collab
        assert delta["sources"] == [{"id": c["id"], "sha256": c["sha256"]} for c in checkpoints]
        assert globex.get(f"/v1/deltas/{delta['id']}").status_code == 200
        assert initech.get(f"/v1/deltas/{delta['id']}").status_code == 404
        assert initech.get(f"/v1/upgrades/{job['id']}").status_code == 404
        assert delta["id"] not in [m["id"] for m in initech.get("/v1/models").json()["data"]]
        assert delta["id"] in [m["id"] for m in acme.get("/v1/models").json()["data"]]
        reply = acme.post("/v1/chat/completions", json={
            "model": delta["id"], "messages": [{"role": "user", "content": PROBE}], "max_tokens": 4,
            "temperature": 0})
        assert reply.status_code == 200 and reply.json()["model"] == delta["id"], reply.text
        adapter_dir = download(acme, delta, tmp_path / "downloaded")
    assert_changes_the_llm(toy_pairs_dir, adapter_dir)
