"""`python -m servers.sharding`: run the sharding server alone."""

from servers.mesh.entrypoint import main

main("sharding")
