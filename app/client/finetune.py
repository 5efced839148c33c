"""`gradlift finetune`: the organization's LoRA fine-tune of a pair's TinyLM on its own data, optionally
private, from the pair's published init (a local pair folder, or downloaded from the service once and
cached, every file checked against its sha256)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tqdm import tqdm

from app.client.download import fetch
from app.client.http import Api, ClientError

if TYPE_CHECKING:
    from models.lora.privacy import DPConfig, UpdateNoise
    from models.training.finetune import TinySource

_PAIR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
INIT = "tiny_lora_init.safetensors"


@dataclass(frozen=True)
class FinetuneRequest:
    pair: str  # a pair id on the service, or a local pair folder
    data: Path
    out: Path
    steps: int | None  # None: the pair's recipe (what its GTs were trained on)
    batch_size: int | None
    lr: float | None
    seed: int
    dp: DPConfig | None
    update_noise: UpdateNoise | None


def is_local_pair(pair: str) -> bool:
    return (Path(pair) / "pair.json").is_file()


def local_source(folder: Path) -> TinySource:
    from models.pairs import Pair
    from models.training.finetune import TinySource

    return TinySource.of(Pair(folder))


def remote_source(api: Api, pair_id: str, cache_dir: Path) -> TinySource:
    """The pair's TinyLM folder and LoRA init from the service, into the cache (files already there are kept)."""
    from models.lora.spec import LoraSpec
    from models.training.finetune import TinySource

    if not _PAIR_ID.match(pair_id):
        raise ClientError(f"{pair_id!r} is neither a pair folder (with pair.json) nor a pair id")
    pair = api.get(f"/v1/pairs/{pair_id}")
    server = urlsplit(api.url).netloc.replace(":", "_")
    root = cache_dir / "pairs" / server / pair_id
    for item in api.get(f"/v1/pairs/{pair_id}/tiny/files")["data"]:
        name = Path(item["name"]).name
        fetch(api, f"/v1/pairs/{pair_id}/tiny/files/{name}", root / "tiny" / name, item["sha256"])
    _fetch_init(api, pair_id, root / INIT)
    lora = pair["lora"]
    alpha = int(lora["alpha"]) if float(lora["alpha"]).is_integer() else lora["alpha"]
    spec = LoraSpec(r=lora["r"], alpha=alpha, dropout=lora["dropout"], targets=tuple(lora["targets"]))
    return TinySource(pair_id, root / "tiny", root / INIT, spec)


def _fetch_init(api: Api, pair_id: str, dest: Path) -> None:
    """The init tensors (small): a conditional GET on the cached copy's sha256, the body checked against the ETag."""
    from app.storage import sha256_file

    headers = {"If-None-Match": f'"{sha256_file(dest)}"'} if dest.is_file() else {}
    response = api.request("GET", f"/v1/pairs/{pair_id}/tiny-lora-init", headers=headers)
    if response.status_code == 304:
        return
    if f'"{hashlib.sha256(response.content).hexdigest()}"' != response.headers.get("etag"):
        raise ClientError(f"the init tensors of pair {pair_id!r} arrived damaged (sha256 differs from the ETag)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(response.content)
    tmp.replace(dest)


def run_finetune(request: FinetuneRequest, connect: Callable[[], Api], cache_dir: Path) -> dict[str, Any]:
    """Check the data, get the pair (from the service only if it is not a local folder), fine-tune with a
    progress bar; the adapter's metadata."""
    from models.data.datafile import read_examples
    from models.recipes import tiny_recipe
    from models.training.finetune import FinetuneConfig, finetune_to_folder

    examples = read_examples(request.data)  # malformed lines fail here, before anything else happens
    if is_local_pair(request.pair):
        source = local_source(Path(request.pair))
    else:
        with connect() as api:
            source = remote_source(api, request.pair, cache_dir)
    recipe = tiny_recipe(source.pair_id)
    cfg = FinetuneConfig(steps=request.steps or recipe.steps, batch_size=request.batch_size or recipe.batch_size,
                         lr=request.lr or recipe.lr, seed=request.seed)
    with tqdm(total=cfg.steps, unit="step", desc="fine-tune" + (" (DP-SGD)" if request.dp else "")) as bar:
        def on_step(_: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            bar.update()

        out = finetune_to_folder(source, examples, request.out, cfg, dp=request.dp,
                                 update_noise=request.update_noise, on_step=on_step)
    return json.loads((out / "gradlift.json").read_text())
