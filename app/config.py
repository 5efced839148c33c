"""The one settings object, read from `GRADLIFT_*` environment variables.

GRADLIFT_DATA_DIR            where everything lives by default (./data)
GRADLIFT_DATABASE_URL        sqlite:///<data>/gradlift.db, or postgresql+psycopg://user@host/db
GRADLIFT_BROKER_URL          sqla+sqlite:///<data>/broker.db (no server), or redis://host:6379/0
GRADLIFT_PAIRS_DIR           built model pairs (<data>/pairs)
GRADLIFT_DEFAULT_PAIR        the pair `serve` makes ready (smol: SmolLM2-135M-Instruct; toy for tests)
GRADLIFT_MAX_UPLOAD_BYTES    largest adapter upload, enforced while streaming (256 MiB)
GRADLIFT_UPGRADE_QUEUE       the Celery queue upgrade tasks go to (upgrades; one per device kind)
GRADLIFT_TRAIN_QUEUE         the Celery queue of the provider's jobs: shadow-run chunks, GT trainings (train)
GRADLIFT_JOB_TIME_LIMIT_S    hard time limit of one upgrade (3600)
GRADLIFT_JOB_LEASE_S         a running job whose worker sent no heartbeat for this long is requeued (60)
GRADLIFT_VISIBILITY_TIMEOUT_S Redis redelivers an unacknowledged task after this long (2 x time limit)
GRADLIFT_DEVICE              where the API's chat engines and the workers' upgrades run: auto (the first CUDA GPU
                             torch sees, else the CPU), cpu, cuda or cuda:N
GRADLIFT_CHAT_MAX_ADAPTERS   generated adapters the chat engine keeps in memory per pair, LRU (32)
GRADLIFT_CHAT_MAX_BATCH      chat requests of one pair decoded together, one forward per token for all (8; 1: each
                             request decodes alone in its own thread)
GRADLIFT_CHAT_TORCH_THREADS  torch threads of the API process, which decodes chat requests (1; 0: torch's default)
GRADLIFT_CHAT_MAX_QUEUE      chat requests of one pair that wait for room in its batch; more get 429 (16)
GRADLIFT_CHAT_MAX_PER_ORG    chat requests one organization may have in flight; more get 429 (8)
GRADLIFT_CHAT_MAX_PROMPT_CHARS longest prompt, in characters, checked before tokenising (65536; 400 beyond)
GRADLIFT_AUTH_CACHE_S        seconds the API reuses a checked API key (and the model a chat request names)
                             before asking the database again (10; 0: every request)
GRADLIFT_AUTH_FAILURE_LIMIT  API keys that are not valid an address may send within the window before it is
GRADLIFT_AUTH_FAILURE_WINDOW_S answered 429 for every key not already known valid (20 within 60 s)
GRADLIFT_MAX_BODY_BYTES      largest request body of every route but the upload (1 MiB; 413 beyond, before reading)
GRADLIFT_METRICS             serve /metrics (job counts of every organization, no key): false
GRADLIFT_LOG_LEVEL           INFO

The organization's command line (`gradlift finetune/upload/upgrade/download/chat`) reads its own three:
GRADLIFT_URL                 the service (http://127.0.0.1:8000)
GRADLIFT_API_KEY             the organization's key
GRADLIFT_CACHE_DIR           pairs' TinyLM files downloaded for fine-tuning (~/.cache/gradlift)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DATABASE_SCHEMES = ("sqlite", "postgresql")
# models.device.DEVICE_PATTERN, repeated: the API starts without importing the ML core (tests/app/test_imports.py).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?)$"
_BROKER_SCHEMES = ("sqla+sqlite", "sqla+postgresql", "redis", "rediss")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADLIFT_", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str = ""
    broker_url: str = ""
    pairs_dir: Path | None = None
    default_pair: str = "smol"
    max_upload_bytes: int = Field(default=256 * 2**20, gt=0)
    upgrade_queue: str = "upgrades"
    train_queue: str = "train"
    job_time_limit_s: int = Field(default=3600, gt=0)
    job_lease_s: float = Field(default=60.0, gt=0)
    visibility_timeout_s: int = 0
    device: str = Field(default="auto", pattern=DEVICE_PATTERN)
    chat_max_adapters: int = Field(default=32, ge=1)
    chat_max_batch: int = Field(default=8, ge=1)
    chat_torch_threads: int = Field(default=1, ge=0)
    chat_max_queue: int = Field(default=16, ge=0)
    chat_max_per_org: int = Field(default=8, ge=1)
    chat_max_prompt_chars: int = Field(default=65_536, ge=1)
    auth_cache_s: float = Field(default=10.0, ge=0)
    auth_failure_limit: int = Field(default=20, ge=1)
    auth_failure_window_s: float = Field(default=60.0, gt=0)
    max_body_bytes: int = Field(default=2**20, gt=0)
    metrics: bool = False
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _fill_and_check(self) -> Settings:
        # Absolute paths, so the API, the workers and migrations agree whatever their working folder.
        self.data_dir = self.data_dir.expanduser().resolve()
        self.pairs_dir = (self.pairs_dir or self.data_dir / "pairs").expanduser().resolve()
        self.database_url = self.database_url or f"sqlite:///{self.data_dir / 'gradlift.db'}"
        self.broker_url = self.broker_url or f"sqla+sqlite:///{self.data_dir / 'broker.db'}"
        self.visibility_timeout_s = self.visibility_timeout_s or 2 * self.job_time_limit_s
        if self.database_url.split(":", 1)[0].split("+", 1)[0] not in _DATABASE_SCHEMES:
            raise ValueError(f"GRADLIFT_DATABASE_URL must be sqlite or postgresql, not {self.database_url!r}")
        if self.broker_url.split(":", 1)[0] not in _BROKER_SCHEMES:
            raise ValueError(f"GRADLIFT_BROKER_URL must start with one of {_BROKER_SCHEMES}")
        if self.visibility_timeout_s <= self.job_time_limit_s:
            raise ValueError("GRADLIFT_VISIBILITY_TIMEOUT_S must exceed GRADLIFT_JOB_TIME_LIMIT_S, "
                             "or Redis redelivers jobs that are still running")
        return self

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def tmp_dir(self) -> Path:
        """Uploads in flight and jobs' working folders: on the blobs' file system, so renames are atomic."""
        return self.data_dir / "tmp"

    @property
    def archives_dir(self) -> Path:
        return self.data_dir / "archives"

    @property
    def broker_is_redis(self) -> bool:
        return self.broker_url.startswith(("redis", "rediss"))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; invalid values fail here, at start."""
    return Settings()


class ClientSettings(BaseSettings):
    """The command line's view: where the service is and the key to use (flags override these)."""

    model_config = SettingsConfigDict(env_prefix="GRADLIFT_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str = ""
    cache_dir: Path = Path("~/.cache/gradlift")

    @model_validator(mode="after")
    def _check(self) -> ClientSettings:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"GRADLIFT_URL must start with http:// or https://, not {self.url!r}")
        self.url = self.url.rstrip("/")
        self.cache_dir = self.cache_dir.expanduser().resolve()
        return self


@lru_cache(maxsize=1)
def get_client_settings() -> ClientSettings:
    return ClientSettings()
