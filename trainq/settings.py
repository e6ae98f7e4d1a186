"""One settings object, read from the environment with the TRAINQ_ prefix, shared by every process."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything a service or worker process needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="TRAINQ_", extra="ignore")

    data_dir: Path = Path(".trainq")
    # Empty means the embedded default under data_dir: SQLite and kombu's filesystem broker.
    database_url: str = ""
    broker_url: str = ""
    service_url: str = "http://127.0.0.1:8000"
    worker_token: str = ""

    host: str = "127.0.0.1"
    port: int = 8000

    lease_seconds: float = Field(30.0, gt=0)  # a claim lives this long without a heartbeat
    heartbeat_seconds: float = Field(2.0, gt=0)  # worker -> service, also how fast a cancel is heard
    metrics_flush_seconds: float = Field(1.0, gt=0)  # reporter batches metric points for this long
    system_metrics_seconds: float = Field(5.0, ge=0)  # a job's sys/... series (CPU, memory, data wait, GPU); 0: none
    pack_checkpoint_seconds: float = Field(30.0, ge=0)  # a packed trial checkpoints this often (and when it stops)
    reconcile_seconds: float = Field(5.0, gt=0)  # how often the service looks for lost jobs
    max_attempts: int = Field(3, ge=1, le=100)  # a job whose worker is lost this many times ends failed
    broker_visibility_seconds: int = 7 * 24 * 3600  # Redis re-delivers an unacknowledged job after this long
    requeue_after_seconds: float = Field(300.0, gt=0)  # a queued job not claimed this long is sent again
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)  # checkpoints travel through the API
    # Where checkpoints, datasets and model bundles live: empty, the data dir's storage/ (file:///path, another
    # folder); s3://bucket/prefix, an object store several service instances share (credentials: the AWS_* variables
    # boto3 reads), with s3_endpoint_url for one that is not AWS (MinIO, Ceph, R2, moto)
    storage_url: str = ""
    s3_endpoint_url: str | None = None

    # Celery's own events and remote control (Flower, `celery inspect`): off, so a worker holds two Redis connections
    # and broadcasts nothing while idle; 1 turns them on (task events, worker heartbeats, the pidbox).
    celery_events: bool = False
    cpu_threads: int = Field(0, ge=0)  # a worker's share of cores for torch (0: all); trainq worker sets it
    worker_max_memory_mb: int = Field(4096, gt=0)  # a job process above this after a job is replaced by a fresh one

    metrics_token: str = ""  # GET /metrics needs it as a bearer token when set (empty: open, as Prometheus expects)
    secret_key: str = ""  # signs session cookies; empty: generated once into data_dir/secret_key
    admin_token: str = ""  # for automation: an admin API token seeded at start
    cookie_secure: bool = False  # set behind TLS so the session cookie is never sent in clear
    login_per_minute: int = Field(10, gt=0)  # sign-in attempts per client address and user name
    submit_per_minute: int = Field(600, gt=0)  # job submissions per user (per service process)
    max_dataset_rows: int = Field(0, ge=0)  # an uploaded dataset with more rows is refused (0: no limit)
    data_memory_mb: int = Field(1024, gt=0)  # a worker's budget for one dataset in memory; larger ones stream
    max_archive_mb: int = Field(20 * 1024, gt=0)  # an archive of images inflating past this is refused
    max_image_pixels: int = Field(40_000_000, gt=0)  # an image with more pixels (from its header) is refused
    max_params: int = Field(50_000_000, gt=0)  # a larger model is refused at submission
    max_memory_bytes: int = Field(16 * 1024**3, gt=0)  # so is a larger memory estimate
    model_cache: int = Field(16, ge=1)  # onnxruntime sessions of model versions kept in each service process
    max_predict_rows: int = Field(10_000, gt=0)  # rows in one prediction request
    predict_threads: int = Field(0, ge=0)  # onnxruntime's threads per prediction (0: its default, every core)

    @model_validator(mode="after")
    def _service_on_its_port(self):
        # TRAINQ_PORT=8765 trainq up, then trainq submit in the same shell: the service is where the port says, unless
        # TRAINQ_SERVICE_URL says otherwise.
        if "service_url" not in self.model_fields_set and "port" in self.model_fields_set:
            self.service_url = f"http://127.0.0.1:{self.port}"
        return self

    @property
    def storage_dir(self) -> Path:
        return self.data_dir / "storage"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'trainq.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()
