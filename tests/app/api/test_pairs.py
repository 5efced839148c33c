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
