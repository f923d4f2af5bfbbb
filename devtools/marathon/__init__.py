"""Render, validate and deploy the HAProxy app definition on Marathon.

The pieces are kept separate so that `invoke deploy` can chain them and the tests can drive
each one on its own:

* `render_app` starts from the shipped `deploy/marathon/haproxy.json` and fills in the
  image, instance count and reload strategy.
* `validate_app` checks a definition against Marathon's own (vendored, draft-04) JSON
  Schema and the project's rules, such as never `privileged`.
* `deploy` does `PUT /v2/apps/{id}` and follows the deployment on `/v2/deployments`.
"""

from devtools.marathon.app import (
    DEFAULT_APP_ID,
    NET_ADMIN,
    SCHEMA_FILE,
    SHIPPED_APP,
    STRATEGIES,
    domain_name,
    image_reference,
    load_app,
    load_schema,
    render_app,
)
from devtools.marathon.deployment import DeployError, credentials, deploy
from devtools.marathon.validate import AppDefinitionError, validate_app

# What `invoke deploy` (tasks.py) and the tests use, as `devtools.marathon.<name>`.
__all__ = [
    "DEFAULT_APP_ID",
    "NET_ADMIN",
    "SCHEMA_FILE",
    "SHIPPED_APP",
    "STRATEGIES",
    "AppDefinitionError",
    "DeployError",
    "credentials",
    "deploy",
    "domain_name",
    "image_reference",
    "load_app",
    "load_schema",
    "render_app",
    "validate_app",
]
