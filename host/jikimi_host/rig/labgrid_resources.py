"""labgrid's side of a Jikimi bench: the resource labgrid has no class for. Loaded by labgrid's
own processes (labgrid-client, or a labgrid Environment) through the `imports:` of an environment
config (rig/labgrid-env.yaml), never imported by the project (labgrid lives in .venv-labgrid).

The exporter needs nothing: it passes a resource of a class it does not know through as it is.
"""

import attr
from labgrid.factory import target_factory
from labgrid.resource.common import Resource


@target_factory.reg_resource
@attr.s(eq=False)
class BumbleHCITransport(Resource):
    """The Bluetooth controller beside the board, for the phone side: a Bumble HCI transport
    (tcp-client:HOST:PORT for a controller served on the network, as the virtual board's is)."""

    transport = attr.ib(validator=attr.validators.instance_of(str))
