from tests.app.api.conftest import Api


def test_pairs_and_the_published_init(toy_api: Api) -> None:
    pairs = toy_api.client.get("/v1/pairs", headers=toy_api.auth()).json()
    assert [p["id"] for p in pairs["data"]] == ["toy"] and pairs["count"] == 1
    toy = toy_api.client.get("/v1/pairs/toy", headers=toy_api.auth()).json()
    assert toy == pairs["data"][0]
    assert toy["lora"]["r"] >= 1 and toy["lora"]["targets"] and "all" in toy["tasks"]
    init = toy_api.client.get("/v1/pairs/toy/tiny-lora-init", headers=toy_api.auth())
    assert init.status_code == 200 and init.content[8:9] == b"{"
    again = toy_api.client.get("/v1/pairs/toy/tiny-lora-init", headers=toy_api.auth() | {
        "If-None-Match": init.headers["etag"]})
    assert again.status_code == 304
    assert toy_api.client.get("/v1/pairs/nope/tiny-lora-init", headers=toy_api.auth()).status_code == 404


def test_the_tinylm_files_an_organization_fine_tunes(toy_api: Api, toy_pairs_dir) -> None:
    import hashlib

    files = toy_api.client.get("/v1/pairs/toy/tiny/files", headers=toy_api.auth()).json()
    names = [f["name"] for f in files["data"]]
    assert files["count"] == len(names) and {"config.json", "model.safetensors"} <= set(names)
    weights = next(f for f in files["data"] if f["name"] == "model.safetensors")
    got = toy_api.client.get("/v1/pairs/toy/tiny/files/model.safetensors", headers=toy_api.auth())
    assert got.status_code == 200 and len(got.content) == weights["bytes"]
    assert hashlib.sha256(got.content).hexdigest() == weights["sha256"] == got.headers["etag"].strip('"')
    assert got.content == (toy_pairs_dir / "toy" / "tiny" / "model.safetensors").read_bytes()
    part = toy_api.client.get("/v1/pairs/toy/tiny/files/model.safetensors",
                              headers=toy_api.auth() | {"Range": "bytes=100-"})
    assert part.status_code == 206 and part.content == got.content[100:]
    for missing in ("nope.json", "..%2Fpair.json", "..%2F..%2Ftoy%2Fpair.json"):
        response = toy_api.client.get(f"/v1/pairs/toy/tiny/files/{missing}", headers=toy_api.auth())
        assert response.status_code == 404, missing
    assert toy_api.client.get("/v1/pairs/toy/tiny/files").status_code == 401
