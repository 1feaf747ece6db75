"""Open311 GeoReport v2 intake: citizens' service requests over HTTP become
`HotlineEvent`s on `city.hotline.events` (see `app.create_app`)."""

from connectors.open311.app import create_app
from connectors.open311.settings import Open311Settings

__all__ = ["Open311Settings", "create_app"]
