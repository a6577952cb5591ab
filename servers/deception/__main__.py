"""`python -m servers.deception`: run the deception server alone."""

from servers.mesh.entrypoint import main

main("deception")
