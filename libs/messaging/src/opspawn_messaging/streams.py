"""The idempotent stream set-up every service runs at start, so any start order works."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BadRequestError

from opspawn_contracts.streams import StreamSettings, stream_configs
from opspawn_contracts.subjects import Subjects


async def ensure_streams(
    js: JetStreamContext, subjects: Subjects, settings: StreamSettings | None = None
) -> None:
    """Create the streams, or bring existing ones to the configuration above."""
    for config in stream_configs(subjects, settings):
        try:
            await js.add_stream(config)
        except BadRequestError:
            await js.update_stream(config)
