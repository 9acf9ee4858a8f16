"""What a job runner needs from the configuration: timeouts, limits, the delivery count, the reply rules."""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.config import Config
from worker.messages import JobRequest


@dataclass(frozen=True, slots=True)
class JobSettings:
    job_timeout_s: float
    max_timeout_s: float
    max_request_bytes: int
    delivery_limit: int
    count_deliveries_in_journal: bool  # classic queues: the broker does not count for us
    max_resubmits: int
    upload: str
    embed_limit: int
    queue: str = "edge.jobs"  # the request queue: the name of the job's trace span
    max_message_bytes: int = 16777216  # amqp.max_message_bytes: a larger final reply is REPLY_TOO_LARGE
    reply_to_pattern: re.Pattern[str] | None = None  # amqp.reply_to_pattern, compiled; None: any reply_to

    @classmethod
    def from_config(cls, cfg: Config) -> JobSettings:
        return cls(
            job_timeout_s=cfg.edge.job_timeout,
            # A job ends (its edge calls included) before the broker's consumer timeout would close the channel.
            max_timeout_s=cfg.amqp.consumer_timeout - 2 * cfg.edge.request_timeout,
            max_request_bytes=cfg.worker.max_request_bytes,
            delivery_limit=cfg.amqp.delivery_limit,
            count_deliveries_in_journal=cfg.amqp.queue_type == "classic",
            max_resubmits=cfg.edge.max_resubmits,
            upload=cfg.edge.upload,
            embed_limit=cfg.edge.embed_limit,
            queue=cfg.amqp.queue,
            max_message_bytes=cfg.amqp.max_message_bytes,
            reply_to_pattern=re.compile(cfg.amqp.reply_to_pattern) if cfg.amqp.reply_to_pattern else None,
        )

    def timeout_s(self, request: JobRequest) -> float:
        """The request's own timeout, else the default, capped so that it ends before the consumer timeout."""
        return min(request.timeout_s or self.job_timeout_s, self.max_timeout_s)
