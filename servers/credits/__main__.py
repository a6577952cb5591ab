"""`python -m servers.credits`: run the credits server alone."""

from servers.mesh.entrypoint import main

main("credits")
